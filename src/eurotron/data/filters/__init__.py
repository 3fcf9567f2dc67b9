"""The compliance stage of eurotron-prepare: what may be trained on, and an account of it.

In the order a document meets them (``stage.py`` runs them per batch, in worker processes):

* ``lists.py``    domain block / allow lists from files;
* ``optout.py``   opt-out: robots.txt for AI crawlers (``robots.py``: RFC 9309 by ``rfc9309.py``, or
                  Protego's reading for Apertus compatibility) and the
                  TDM Reservation Protocol (``tdmrep.py``), decided from an on-disk snapshot
                  (``snapshot.py``; ``fetch.py`` builds one for `eurotron-optout fetch`);
* ``pii.py``      e-mail, IP, IBAN and phone numbers → placeholders;
* ``dedup.py``    exact and MinHash-LSH near-duplicate keys (decided in corpus order by prepare);
* ``report.py``   report.json / report.md; ``summary.py`` drafts the EU training-content summary.
"""
