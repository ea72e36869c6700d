"""Transcription jobs: faster-whisper over the queue (options, audio, pipeline, task)."""
