"""The DICOM node (`brain-tumor dicom-node`): a C-STORE SCP that keeps what it receives in a spool, analyses each
study once it is quiet, and sends the SEG and SR to the configured destinations."""
