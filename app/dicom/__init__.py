"""DICOM objects: reading what arrives (headers, pixel data, frames, series) and writing what the service answers
(SEG, SR, their UIDs). Used by every path that takes DICOM: the HTTP API, the CLI, the DICOM node and pacs-sync."""
