"""EkaScribe: authentication, the session API, and the stream socket."""
