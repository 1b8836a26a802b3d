"""DICOM files as one series: which files and series the models read, and what comes back for the series.

- `reading`: a request's DICOM files read into one series within its limits (headers, series choice, decoding).
- `choice`: which of a request's files the models read (`choose_series`), the one place the flow applies the
  sequence roles.
- `sequence_roles`: which series of a study is FLAIR, T1 pre- or post-contrast, by their attributes.
- `sequence_rules`: the rules and default name wildcards behind those roles (the ``SEQUENCE_*`` settings).
- `info`: what the roles are read from in a series' header (`SeriesInfo`).
- `result`: what the models say about a series (`SeriesResult`), its 3-D clean-up, and the mask rule for a slice
  answered on its own.
"""
