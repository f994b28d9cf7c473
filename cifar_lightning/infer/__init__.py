"""Using a trained model: predictions in Python (``predict``), the ``predict`` command's CSV
(``prediction_writer``) and the ONNX export (``export``)."""
