"""The HTTP service: the LitServe API, its upload limits and page (``server``) and uvicorn's missing
header timeout (``header_timeout``)."""
