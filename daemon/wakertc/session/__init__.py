"""The device's sessions with OpenAI: one module per API behind one small interface.

`events.py` holds the interface (`Session`) and the backend-neutral events it reports;
`realtime.py` is how the Realtime API works, `live.py` how GPT-Live works. `conversation.py`
drives a `Session` and maps its events onto phases.
"""
