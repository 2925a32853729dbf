"""The HTTP gateway: FastAPI app and routers (``api``), request decoding (``inputs``), preparation into
queue requests, outputs, settings and metrics. The top room: it imports ``service.runtime`` and
``service.engine``, and nothing imports it.
"""
