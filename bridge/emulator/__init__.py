"""EkaScribe emulator: a real server that speaks EkaScribe's voice protocol, for tests and demos.

Follows the EkaScribe API spec (specs/ekascribe-api.md); where Eka's docs and its OSS server
disagree, the docs win unless an option says otherwise.
"""

from bridge.emulator.app import Emulator
from bridge.emulator.faults import Faults
from bridge.emulator.options import EmulatorOptions
from bridge.emulator.recording import RecordedRequest
from bridge.emulator.state import EmulatedSession

__all__ = ["EmulatedSession", "Emulator", "EmulatorOptions", "Faults", "RecordedRequest"]
