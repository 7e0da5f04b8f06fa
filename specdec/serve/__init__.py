"""`specdec serve`: an OpenAI-compatible HTTP server over one SpecDecoder (extra `serve`).

server.py runs uvicorn until a signal; app.py holds the routes; requests.py checks request
bodies and responses.py builds OpenAI's response shapes; worker.py runs one generation at a
time on the decoder's thread, behind a bounded FIFO; generation.py is what a job does with the
decoder (SpecDecoder.stream_ids: no decoding logic here); middleware.py: API key, request log.
"""
