"""The backup container: one self-describing file per backup (and per
archived WAL segment). ``format`` holds its structures as pure code,
``writer``/``reader`` move them to and from a file object, ``file`` writes one
durably on disk, ``rotate`` re-wraps its key; ``errors`` names what can go wrong."""
