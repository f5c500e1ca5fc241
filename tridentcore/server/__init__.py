"""HTTP serving: the FastAPI app (``app``), its bodies (``schemas``), the one HTTP status mapping
(``errors``), Prometheus metrics (``metrics``), uvicorn wiring (``serve``) and a child-process
launcher for tests and benchmarks (``launch``)."""
