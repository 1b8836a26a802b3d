"""pacs-sync (`brain-tumor pacs-sync`): follows an Orthanc's change log, analyses each stable study, stores the SEG
and SR back into it and records what it did, through Orthanc's REST API."""
