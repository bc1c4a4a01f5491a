"""What several test files share: fixture data in the datasets' official formats, embeddings
with known geometry, the Emoji-Styles packages, callbacks that stop a run on cue, and the
peak memory of a call."""
