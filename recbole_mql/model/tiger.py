"""TIGER (Rajput et al., NeurIPS 2023) in this harness: the text-only, single-task, no-pre-training
corner of MQL4GRec — same T5 backbone and decoder, text codes (whose extra collision level plays
TIGER's disambiguation token), the next-item task alone. Defaults in properties/model/TIGER.yaml."""

from recbole_mql.model.mql4grec import MQL4GRec


class TIGER(MQL4GRec):
    pass
