"""Air-gapped sites: seed (resolve + fetch), export, import, cache (DESIGN, "Air-gap")."""
