"""The HTTP front end: validate, spool, answer at once; a flusher sends events on to the stream."""
