"""The Result and its JSON document."""

import json
import math

import numpy as np
from synth import make_pair, photo

import regtool
from regtool.result import LevelRecord
from regtool.transform import rigid_matrix


def test_the_document_is_json_and_its_matrix_agrees_with_the_parameters():
    target, source, _ = make_pair(photo(0), (120, 128), (3.0, 2.0), 5.0, noise=0.01, seed=0)
    r = regtool.align(target, source)
    doc = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert np.allclose(np.asarray(doc["matrix"]),
                       rigid_matrix(doc["tx"], doc["ty"], doc["theta"])[:2], atol=1e-12)
    assert math.isclose(doc["theta_deg"], math.degrees(doc["theta"]))
    assert set(doc["uncertainty"]) == {"shift", "theta_deg", "endpoint_px", "reason"}
    assert doc["metric"] == "ncc" and doc["converged"] is True
    assert [lv["level"] for lv in doc["levels"]][-1] == 0


def test_infinite_and_nan_numbers_become_null():
    rec = LevelRecord(2, (30, 40), 3, math.inf, False, 0.01)
    assert rec.to_dict()["loss"] is None
