"""Audio path: codecs, stateful resampling, per-track timelines and the mix."""
