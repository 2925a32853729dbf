"""Request decoding: every input encoding becomes a list of ``TileInput`` (raw arrays + dates + georef).

``geotiff`` (multipart files), ``arrays`` (base64 JSON arrays, .npy, .npz), ``dates`` (form/JSON
dates), ``multipart``/``jsonbody``/``npzbody`` (one module per request encoding). Nothing here
normalises or validates against the model: ``service.gateway.prepare`` does that, once, for all encodings.
"""
