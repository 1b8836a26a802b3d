"""DICOM objects: reading what arrives (headers, pixel data, frames, series) and writing what the service answers
(SEG, SR, their UIDs). Used by every path that takes DICOM: the HTTP API, the CLI, the DICOM node and pacs-sync.

Importing the package corrects one table of pydicom's (below), so that it holds before any value is read."""

from pydicom import charset

# pydicom 3.0 counts Python's "iso_ir_58" among the codecs that follow ISO 2022 escape sequences themselves, but it is
# plain GB2312 (EUC-CN), which keeps them: a "\ISO 2022 IR 58" name (ESC $ ) A before each GB2312 run, PS3.5 6.1.2.5)
# came out with the ESC in it and was left out of the SEG and SR as broken. Left off that list, the escape sequence
# is stripped by pydicom and the run decoded, as for Korean (ISO 2022 IR 149). The service writes UTF-8 only, so
# pydicom's encoding of GB2312, which follows the same list, is never used.
charset.handled_encodings = tuple(name for name in charset.handled_encodings if name != "iso_ir_58")
