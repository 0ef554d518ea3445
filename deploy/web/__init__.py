"""The live web view (`mfvan web`, `mfvan run --web`): each camera with the face its spot
stage tracks and its spotter's signal, each event as it happens with what the face did,
and the event store's history. `hub` holds what the view hears from the pipeline; `app`
serves it (Starlette on uvicorn; templates and plain JavaScript, no build step).
"""
