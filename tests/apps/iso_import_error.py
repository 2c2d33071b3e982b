raise RuntimeError("ISO-IMPORT-FAILED")
