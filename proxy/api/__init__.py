"""JSON APIs under ``/api/<segment>/``: anaconda-client's (anaconda.py, owner = channel)."""
