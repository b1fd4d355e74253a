"""The live view: a wall of cameras in a browser, fed by the pipeline's topics.

`camstream view` reads camstream.predictions, .drift, .shadow and .frames.dlq (a few
minutes back, then live) and the frames topic (live, a thumbnail per camera at a
bounded rate), keeps each camera's latest state and recent history, and serves a page
that updates by server-sent events. Modules, each small and tested on its own:

- state: what the view knows of each camera (FleetState), from records to tiles;
- thumbnails: frames to small JPEGs, at most one per camera per interval;
- feed: the Kafka readers (and the registry poll) that fill the state, one thread each;
- events: the SSE fan-out, coalescing updates per client, so a slow client costs a
  bounded amount of memory and never holds up the others;
- app: the Starlette application behind its token check (``ViewAuth``);
- launch: the bind policy (``check_bind``) and ``ViewProcess``, the view as a child
  process of a stack launcher (standard library only);
- server: uvicorn, the readers and the fan-out, run until SIGTERM.
"""
