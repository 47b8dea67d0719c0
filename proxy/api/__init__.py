"""JSON APIs under ``/api/<segment>/``: anaconda-client's (owner = channel): anaconda.py
(packages, files, labels, uploads) and accounts.py (tokens, sign-in, groups)."""
