"""The HTTP service end to end: a small store is trained, its bundle exported, and the real BentoML
server is started on a free port. Every endpoint's happy path, validation errors that name the
field, the API key, unknown customers (recommend: a flagged fallback; customer_scores: 404), the
size limit, and that the answers are the batch scores and lists of the same customers (one scoring
code path). ``bentoml build`` packages the bundle."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest

from features.identity import hash_key
from features.schema import KeyType
from features.store import connect, ibis_backend
from training.bundle import load_bundle
from training.recommend.options import RecommendOptions
from training.scoring import build_snapshot, churn_lookback_days, score_rows

pytestmark = [pytest.mark.serving, pytest.mark.slow]

from tests.fixtures_serving import API_KEY, ROOT


@pytest.fixture(scope="module")
def trained(serving_bundle):
    return serving_bundle


@pytest.fixture(scope="module")
def server(serving_server):
    return serving_server[0]


def call(url: str, path: str, body: object | None = None, *, key: str | None = None,
         raw: bytes | None = None) -> tuple[int, object]:
    data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    request = urllib.request.Request(f"{url}{path}", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except json.JSONDecodeError:
            return exc.code, text.decode()


@pytest.fixture(scope="module")
def bundle(trained):
    return load_bundle(trained[1])


def _metadata_ok(body: dict, bundle) -> None:
    assert body["metadata"] == {"model_versions": bundle.versions(), "snapshot_date": bundle.manifest["snapshot_date"]}


def _fields(body: object) -> str:
    return json.dumps(body)


# --- happy paths --------------------------------------------------------------------------------------


def test_info_and_echo(server, bundle):
    status, body = call(server, "/info")
    assert status == 200
    assert body["snapshot_date"] == bundle.manifest["snapshot_date"]
    assert {k: v["version"] for k, v in body["models"].items()} == bundle.versions()
    assert body["models"]["clv"]["name"] == "rapport-clv"
    _metadata_ok(body, bundle)
    status, body = call(server, "/echo", {"message": "ping"})
    assert status == 200 and body["message"] == "ping"
    _metadata_ok(body, bundle)


def test_recommend_equals_the_model_for_known_customers(server, bundle):
    model = bundle.recommender
    customers = [int(c) for c in model.data_.customer_ids[:: max(1, model.data_.n_users // 8)][:8]]
    for customer in customers:
        status, body = call(server, "/recommend", {"customer_id": customer, "n": 7})
        assert status == 200, body
        expected = model.recommend([customer], 7)
        assert body["customer_id"] == customer and body["known"] and not body["fallback"]
        assert [i["item_id"] for i in body["items"]] == expected["item_id"].tolist()
        assert [i["score"] for i in body["items"]] == expected["score"].tolist()
        assert [i["source"] for i in body["items"]] == expected["source"].tolist()
        assert [i["reason"] for i in body["items"]] == expected["reason"].tolist()
        assert [i["rank"] for i in body["items"]] == list(range(1, len(expected) + 1))
        _metadata_ok(body, bundle)


def test_concurrent_recommend_requests_each_get_their_own_list(server, bundle):
    """Requests that arrive together are ranked in one block (serving/batching.py): each still gets
    exactly the list the model gives that customer alone, whatever its options."""
    from concurrent.futures import ThreadPoolExecutor

    model = bundle.recommender
    customers = [int(c) for c in model.data_.customer_ids[:: max(1, model.data_.n_users // 24)][:24]]
    unknown = int(model.data_.customer_ids.max()) + 5
    # Plain lists (looked up in the default lists), lists with purchases and lists longer than the
    # default ones (both ranked, in blocks), and an unknown customer.
    options = [{}, {"exclude_purchased": False}, {"n": 25}]
    requests = [{"customer_id": c, "n": 3 + k % 3, **options[k % 3]} for k, c in enumerate(customers)]
    requests.append({"customer_id": unknown, "n": 4})
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda body: call(server, "/recommend", body), requests))
    for request, (status, body) in zip(requests, answers):
        assert status == 200, body
        expected = model.recommend([request["customer_id"]], request["n"],
                                   exclude_purchased=request.get("exclude_purchased", True))
        assert [i["item_id"] for i in body["items"]] == expected["item_id"].tolist()
        assert [i["score"] for i in body["items"]] == expected["score"].tolist()
        assert body["customer_id"] == request["customer_id"]
    assert answers[-1][1]["fallback"] and not answers[-1][1]["known"]
    with urllib.request.urlopen(f"{server}/metrics") as response:
        metrics = response.read().decode()
    assert "rapport_recommend_batch_size_bucket" in metrics
    assert 'rapport_recommend_answers_total{path="default_list"}' in metrics
    assert 'rapport_recommend_answers_total{path="ranked"}' in metrics


def test_default_lists_are_the_lists_the_model_ranks(trained, bundle):
    """Every known customer's plain list comes from the lists ranked at export: each prefix is the
    list the model ranks for that n; other options and longer lists are ranked."""
    from serving import schemas
    from serving.runtime import Runtime

    settings, _ = trained
    assert bundle.default_lists is not None and bundle.default_lists.length == settings.serving.default_lists
    assert bundle.default_lists.n_customers == bundle.recommender.data_.n_users
    runtime = Runtime(bundle, settings)
    model = bundle.recommender
    customers = model.data_.customer_ids
    for n in (1, 7, settings.serving.default_lists):
        lists = [runtime.listed(schemas.RecommendRequest(customer_id=int(c), n=n)) for c in customers]
        expected = zip(model.rank(customers, RecommendOptions(n)).by_customer(customers), model.knows(customers))
        for answer, (ranked, known) in zip(lists, expected):
            response, outcome = answer
            assert known and not outcome.fallback
            assert [(i.item_id, i.score, i.source, i.reason) for i in response.items] == [
                (item, score, source, reason) for _, item, score, source, reason in ranked.records(model.data_.item_ids)]
    customer = int(customers[0])
    for asked in ({"n": settings.serving.default_lists + 1}, {"exclude_purchased": False}, {"channel": "web"},
                  {"categories": ["x"]}, {"exclude_categories": ["x"]}, {"exclude_items": ["x"]}):
        assert runtime.listed(schemas.RecommendRequest(customer_id=customer, **asked)) is None, asked
    unknown = int(customers.max()) + 7
    assert runtime.listed(schemas.RecommendRequest(customer_id=unknown)) is None


def test_requests_with_equal_options_are_ranked_in_one_block(trained, bundle, monkeypatch):
    """The runtime groups concurrent requests by the value of their options: separate request bodies
    that ask the same are one block of the model; another ``n`` is another block, a default list a
    lookup; every answer is the list the model ranks for that request alone."""
    from serving import schemas
    from serving.runtime import Runtime

    settings, _ = trained
    runtime = Runtime(bundle, settings)
    model = bundle.recommender
    calls: list[tuple[list[int], RecommendOptions]] = []
    rank = model.rank

    def spy(customer_ids, options=None, **kwargs):
        calls.append((list(customer_ids), options))
        return rank(customer_ids, options, **kwargs)

    a, b = (int(c) for c in model.data_.customer_ids[:2])
    unknown = int(model.data_.customer_ids.max()) + 3
    categories = sorted({c for c in model.data_.category if c})[:2]
    filters = {"categories": categories, "exclude_purchased": False}
    asked = [{"customer_id": a, "n": 5, **filters}, {"customer_id": b, "n": 5, **filters},
             {"customer_id": a, "n": 6, **filters}, {"customer_id": unknown, "n": 5, **filters},
             {"customer_id": a, "n": 5, **filters}, {"customer_id": b, "n": 5}]
    monkeypatch.setattr(model, "rank", spy)
    answers = runtime.recommend_many([schemas.RecommendRequest(**body) for body in asked])
    monkeypatch.undo()
    assert calls == [([a, b, unknown], RecommendOptions(5, **filters)), ([a], RecommendOptions(6, **filters))]
    for body, (response, outcome) in zip(asked, answers):
        body = dict(body)
        customer = body.pop("customer_id")
        expected = model.recommend([customer], **body)
        assert response.known == (customer != unknown) and outcome.fallback == (customer == unknown)
        assert [(i.item_id, i.score, i.source, i.reason) for i in response.items] == list(zip(
            expected["item_id"], expected["score"], expected["source"], expected["reason"]))


def test_recommend_filters_are_the_models(server, bundle):
    model = bundle.recommender
    customer = int(model.data_.customer_ids[0])
    categories = sorted({c for c in model.data_.category if c})[:2]
    first = call(server, "/recommend", {"customer_id": customer, "n": 5})[1]["items"][0]["item_id"]
    request = {"customer_id": customer, "n": 5, "categories": categories, "exclude_items": [first],
               "exclude_purchased": False}
    status, body = call(server, "/recommend", request)
    assert status == 200, body
    expected = model.recommend([customer], 5, categories=categories, exclude_items=[first], exclude_purchased=False)
    assert [i["item_id"] for i in body["items"]] == expected["item_id"].tolist()
    assert first not in [i["item_id"] for i in body["items"]]


def test_recommend_by_raw_key_resolves_through_the_identity_map(server, bundle, trained):
    settings, directory = trained
    keys = pd.read_parquet(directory.parent / "raw" / "customer_keys.parquet")
    email = next(e for e in keys["email"] if isinstance(e, str) and e)
    con = connect(settings, read_only=True)
    try:
        found = con.execute("SELECT customer_id FROM identity_map WHERE key_hash = ?",
                            [hash_key(KeyType.EMAIL, email, settings)]).fetchall()
    finally:
        con.close()
    assert len(found) == 1
    customer = int(found[0][0])
    # Case and surrounding blanks do not make another key (the identity module's normalisation).
    status, body = call(server, "/recommend", {"key": {"type": "email", "value": f"  {email.upper()} "}, "n": 4})
    assert status == 200, body
    assert body["customer_id"] == customer
    expected = bundle.recommender.recommend([customer], 4)
    assert [i["item_id"] for i in body["items"]] == expected["item_id"].tolist()
    # An e-mail nobody used: resolved to no one, served the popular list.
    status, body = call(server, "/recommend", {"key": {"type": "email", "value": "nobody@example.invalid"}, "n": 4})
    assert status == 200, body
    assert body["customer_id"] is None and body["fallback"] and not body["known"]
    assert all(i["source"] == "popularity" for i in body["items"]) and len(body["items"]) == 4


def test_unknown_customer_gets_a_flagged_fallback_or_a_fold_in(server, bundle):
    model = bundle.recommender
    unknown = int(model.data_.customer_ids.max()) + 1_000
    status, body = call(server, "/recommend", {"customer_id": unknown, "n": 5, "channel": "app"})
    assert status == 200, body
    assert body["fallback"] and not body["known"]
    expected = model.recommend([unknown], 5, channel="app")
    assert [i["item_id"] for i in body["items"]] == expected["item_id"].tolist()
    recent = [str(model.data_.item_ids[0]), str(model.data_.item_ids[1])]
    status, body = call(server, "/recommend", {"customer_id": unknown, "n": 5, "recent_items": recent})
    assert status == 200 and not body["fallback"]
    expected = model.recommend([unknown], 5, recent_items={unknown: recent})
    assert [i["item_id"] for i in body["items"]] == expected["item_id"].tolist()
    with urllib.request.urlopen(f"{server}/metrics") as response:
        metrics = response.read().decode()
    assert 'rapport_fallbacks_total{endpoint="recommend"}' in metrics
    assert 'rapport_unknown_customers_total{endpoint="recommend"}' in metrics


def test_similar_items(server, bundle):
    model = bundle.recommender
    item = str(model.data_.item_ids[int(np.argmax(model.data_.buyers))])
    status, body = call(server, "/similar_items", {"item_id": item, "n": 6})
    assert status == 200, body
    expected = model.similar_items(item, 6)
    assert [i["item_id"] for i in body["items"]] == expected["item_id"].tolist()
    assert [i["score"] for i in body["items"]] == expected["score"].tolist()
    _metadata_ok(body, bundle)
    status, body = call(server, "/similar_items", {"item_id": "no-such-item"})
    assert status == 404 and "no-such-item" in body["error"] and body["detail"][0]["loc"] == ["item_id"]


def _records(frame: pd.DataFrame) -> list[dict]:
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for name, value in row.items():
            if isinstance(value, pd.Timestamp):
                value = value.date().isoformat()
            elif value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
                value = None
            elif isinstance(value, np.generic):
                value = value.item()
            clean[name] = value
        out.append(clean)
    return out


def test_customer_scores_equal_the_batch_scores_of_the_store(server, bundle, trained):
    settings, _ = trained
    con = connect(settings, read_only=True)
    try:
        snapshot = build_snapshot(ibis_backend(con), bundle.clv.cutoff_, time_unit=bundle.clv.time_unit_,
                                  lookback_days=churn_lookback_days(bundle.churn))
    finally:
        con.close()
    in_population = snapshot.churn.index[:5].tolist()
    lapsed = snapshot.customers.index[~snapshot.customers.index.isin(snapshot.churn.index)][:5].tolist()
    ids = in_population + lapsed
    status, body = call(server, "/customer_scores", {"customer_ids": ids}, key=API_KEY)
    assert status == 200, body
    versions = bundle.versions()
    expected = score_rows(snapshot, pd.Index(ids), bundle.clv, bundle.churn,
                          versions={"clv": versions["clv"], "churn": versions["churn"]})
    # The server's snapshot is the bundle's, the expected one is rebuilt from the store here: DuckDB
    # sums floats on several threads, so money averages may differ in the last bit between the two.
    got, want = body["scores"], _records(expected)
    assert [sorted(row) for row in got] == [sorted(row) for row in want]
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if not isinstance(v, float)} == \
            {k: v for k, v in w.items() if not isinstance(v, float)}
        assert {k: v for k, v in g.items() if isinstance(v, float)} == \
            pytest.approx({k: v for k, v in w.items() if isinstance(v, float)}, rel=1e-12, abs=1e-12)
    assert {s["risk_band"] for s in body["scores"][5:]} <= {"lapsed"}
    _metadata_ok(body, bundle)
    # The second API key works too; a duplicate is answered once.
    status, body = call(server, "/customer_scores", {"customer_ids": [ids[0], ids[0]]}, key="other")
    assert status == 200 and len(body["scores"]) == 1


def _every_customer_answered(answer, ids: list[int]) -> list[dict]:
    """``answer(chunk)`` (a CustomerScoresResponse) for every id, 1,000 at a time (the request limit)."""
    rows: list[dict] = []
    for start in range(0, len(ids), 1_000):
        rows += answer(ids[start : start + 1_000]).model_dump()["scores"]
    return rows


def _bitwise(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) and [sorted(g) for g in got] == [sorted(w) for w in want]
    for g, w in zip(got, want):
        # Bits, not values: -0.0 == 0.0, and a rounding in the last place must show.
        assert {k: np.float64(v).tobytes() if isinstance(v, float) else v for k, v in g.items()} == \
            {k: np.float64(v).tobytes() if isinstance(v, float) else v for k, v in w.items()}, w["customer_id"]


def test_customer_scores_are_the_rows_of_rapport_score_looked_up(server, bundle, trained, tmp_path, monkeypatch):
    """Every customer of the bundle: the looked-up answer is, bit for bit, the row ``rapport score``
    writes and the answer recomputed from the bundle's snapshot with the models (the path of a
    bundle without score rows); 1,000 of them over HTTP too."""
    from typer.testing import CliRunner

    from rapport.cli import app
    from serving.lookup import Lookups
    from serving.runtime import Runtime

    settings, directory = trained
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(settings.data_dir))
    done = CliRunner().invoke(app, ["score", "--output", str(tmp_path / "scores.parquet")], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    batch = pd.read_parquet(tmp_path / "scores.parquet")
    ids = [int(c) for c in batch["customer_id"]]
    assert sorted(ids) == bundle.snapshot.customers.index.tolist()
    lookups = Lookups.from_directory(directory, settings)
    assert lookups.scores is not None and len(lookups.scores) == len(ids)
    looked_up = _every_customer_answered(lookups.customer_scores, ids)
    _bitwise(looked_up, _records(batch))
    _bitwise(looked_up, _every_customer_answered(Runtime(bundle, settings).recomputed_scores, ids))
    # Over HTTP: the same JSON (a float's shortest form parses back to its bits).
    chosen = ids[::-1][:1_000]
    status, body = call(server, "/customer_scores", {"customer_ids": chosen}, key=API_KEY)
    assert status == 200
    _bitwise(body["scores"], _every_customer_answered(lookups.customer_scores, chosen))
    _metadata_ok(body, bundle)


def test_a_bundle_without_score_rows_recomputes_them_and_says_so_once(trained, bundle, tmp_path, caplog):
    from serving.lookup import Lookups, RequestError
    from serving.runtime import Runtime
    from training.bundle import SCORES, read_manifest, write_manifest

    settings, directory = trained
    earlier = tmp_path / "bundle"
    shutil.copytree(directory, earlier)
    shutil.rmtree(earlier / SCORES)
    manifest = read_manifest(earlier)
    manifest.pop("files")
    write_manifest(earlier, manifest)
    with caplog.at_level("WARNING", logger="serving.lookup"):
        lookups = Lookups.from_directory(earlier, settings)
        runtime = Runtime.from_directory(earlier, settings, lookups)
        lapsed = bundle.snapshot.customers.index.difference(bundle.snapshot.churn.index)
        ids = bundle.snapshot.churn.index[:150].tolist() + lapsed[:50].tolist()
        recomputed = runtime.customer_scores(ids + ids[:3]).model_dump()["scores"]
    said = [r.getMessage() for r in caplog.records if "no score rows" in r.getMessage()]
    assert lookups.scores is None and runtime.bundle.scores is None and len(said) == 1, said
    assert "export the bundle again" in said[0]
    current = Lookups.from_directory(directory, settings)
    _bitwise(recomputed, current.customer_scores(ids).model_dump()["scores"])
    # A worker reads the snapshot only to score with it: not when the bundle holds the rows.
    assert runtime.bundle.snapshot is not None
    looking_up = Runtime.from_directory(directory, settings, current)
    assert looking_up.bundle.snapshot is None and looking_up.customer_scores(ids[:5]).scores[0].customer_id == ids[0]
    # Unknown customers: the same 404 either way.
    for answer in (runtime.customer_scores, Lookups.from_directory(directory, settings).customer_scores):
        with pytest.raises(RequestError) as refused:
            answer([ids[0], 987_654_321, 987_654_320])
        assert refused.value.status == 404 and refused.value.unknown_customer_ids == [987_654_321, 987_654_320]
        assert refused.value.message == "2 unknown customer(s): 987654321, 987654320"


# --- errors -------------------------------------------------------------------------------------------


def test_customer_scores_need_a_valid_api_key(server):
    assert call(server, "/customer_scores", {"customer_ids": [1]})[0] == 401
    status, body = call(server, "/customer_scores", {"customer_ids": [1]}, key="wrong")
    assert status == 403 and "X-API-Key" in _fields(body)


def test_unknown_customers_in_scores_are_a_404_naming_them(server, bundle):
    known = int(bundle.snapshot.customers.index[0])
    status, body = call(server, "/customer_scores", {"customer_ids": [known, 987_654_321]}, key=API_KEY)
    assert status == 404
    assert body["unknown_customer_ids"] == [987_654_321] and "987654321" in body["error"]
    _metadata_ok(body, bundle)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/recommend", {"customer_id": 1, "n": 0}, "n"),
    ("/recommend", {"customer_id": 1, "n": 101}, "n"),
    ("/recommend", {"customer_id": "abc"}, "customer_id"),
    ("/recommend", {"customer_id": -3}, "customer_id"),
    ("/recommend", {"customer_id": 1, "channel": "fax"}, "channel"),
    ("/recommend", {"customer_id": 1, "nn": 3}, "nn"),
    ("/recommend", {"key": {"type": "passport", "value": "x"}}, "type"),
    ("/recommend", {"customer_id": 1, "exclude_items": "P1"}, "exclude_items"),
    ("/recommend", {"n": 3}, "customer_id or key"),
    ("/similar_items", {"n": 3}, "item_id"),
    ("/customer_scores", {"customer_ids": []}, "customer_ids"),
    ("/customer_scores", {"customer_ids": list(range(1_001))}, "customer_ids"),
    ("/customer_scores", {"customer_ids": [1.5]}, "customer_ids"),
])
def test_malformed_requests_get_a_400_naming_the_field(server, path, body, field):
    status, answer = call(server, path, body, key=API_KEY)
    assert status == 400, answer
    assert field in _fields(answer)
    assert "Traceback" not in _fields(answer)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"null", b'{"customer_id": 1e999}'])
def test_garbage_bodies_are_a_400_not_a_500(server, raw):
    status, answer = call(server, "/recommend", raw=raw)
    assert status == 400, answer
    assert "Traceback" not in _fields(answer)


def test_large_bodies_are_refused(server):
    # Just over the 256 KiB default: small enough for the socket buffers, so the client finishes
    # sending before it reads the early 413.
    big = json.dumps({"customer_ids": [1] * 90_000}).encode()
    assert len(big) > 262_144
    status, answer = call(server, "/customer_scores", raw=big, key=API_KEY)
    assert status == 413 and "larger than" in answer["error"]
    # A declared length over the limit is refused before any body byte is read.
    import http.client
    from urllib.parse import urlparse

    where = urlparse(server)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    try:
        connection.putrequest("POST", "/recommend")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(50_000_000))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
    finally:
        connection.close()


# --- packaging ----------------------------------------------------------------------------------------


def test_bentoml_build_packages_the_bundle(trained, tmp_path):
    _, bundle = trained
    context = tmp_path / "context"
    context.mkdir()
    for package in ("features", "training", "serving"):
        shutil.copytree(ROOT / package, context / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "bentofile.yaml", context / "bentofile.yaml")
    shutil.copytree(bundle, context / "bundle")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run([sys.executable, "-m", "bentoml", "build", str(context)], cwd=context, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    manifests = list((tmp_path / "home" / "bentos" / "rapport").glob("*/src/bundle/manifest.json"))
    assert len(manifests) == 1
    assert json.loads(manifests[0].read_text()) == json.loads((bundle / "manifest.json").read_text())


# --- refusals before the body, logs, the OpenAPI document -----------------------------------------


@pytest.mark.parametrize("path", ["/recommend", "/similar_items", "/customer_scores", "/echo"])
def test_bodies_that_are_not_json_get_a_415(server, path):
    boundary = "XyZ"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"customer_id\"\r\n\r\n1\r\n--{boundary}--\r\n").encode()
    for content_type, body in ((f"multipart/form-data; boundary={boundary}", form),
                               ("application/x-www-form-urlencoded", b"customer_id=1"), ("text/plain", b"{}")):
        request = urllib.request.Request(f"{server}{path}", data=body, method="POST",
                                         headers={"Content-Type": content_type, "X-API-Key": API_KEY})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 415, (content_type, refused.value.read())
        answer = json.loads(refused.value.read())
        assert answer["detail"][0]["loc"] == ["Content-Type"] and "application/json" in answer["error"]


def test_customer_scores_checks_the_key_before_the_body(server):
    # Without a key, a malformed body (or one that is not JSON) is not looked at: 401, not 400.
    assert call(server, "/customer_scores", raw=b"{not json")[0] == 401
    assert call(server, "/customer_scores", {"customer_ids": "all"}, key="wrong")[0] == 403


def test_refused_requests_are_logged_at_info_without_their_values(server, serving_server):
    """The values of a refused request (here a phone number in a misspelt request) never reach the
    server log, nor a traceback; the refusal is logged at INFO with the path, status and field."""
    server_log = serving_server[1]
    phone = "+44 7700 900461"
    status, answer = call(server, "/recommend", {"key": {"type": "phone", "value": phone}, "nn": phone})
    assert status == 400 and "nn" in _fields(answer) and phone not in _fields(answer)
    status, _ = call(server, "/customer_scores", {"customer_ids": [phone]}, key=API_KEY)
    assert status == 400
    status, _ = call(server, "/recommend", raw=json.dumps({"customer_id": phone}).encode()[:-1])
    assert status == 400
    time.sleep(0.5)  # the workers write their log lines
    text = server_log.read_text()
    assert "7700" not in text
    assert "Traceback" not in text
    assert "[INFO]" in text and "POST /recommend: 400" in text and "nn" in text


def test_the_openapi_document_lists_every_answer(server):
    with urllib.request.urlopen(f"{server}/docs.json", timeout=30) as response:
        spec = json.loads(response.read())
    post = {path: item["post"] for path, item in spec["paths"].items() if "post" in item}
    assert set(post) == {"/recommend", "/similar_items", "/customer_scores", "/info", "/echo"}
    for path, operation in post.items():
        statuses = set(operation["responses"])
        assert {"200", "500"} <= statuses
        if path != "/info":
            assert {"400", "413", "415"} <= statuses, path
        for status, answer in operation["responses"].items():
            assert answer["content"]["application/json"]["schema"]["$ref"].startswith("#/components/schemas/")
    assert {"401", "403", "404"} <= set(post["/customer_scores"]["responses"])
    assert post["/customer_scores"]["security"] == [{"ApiKey": []}]
    assert "401" not in post["/recommend"]["responses"]  # public unless serving_recommend_requires_key
    body = spec["components"]["schemas"]["RecommendRequest"]
    assert [v["required"] for v in body["oneOf"]] == [["customer_id"], ["key"]]
    assert all(v["additionalProperties"] is False for v in body["oneOf"])
    assert spec["components"]["schemas"]["CustomerScoresRequest"]["additionalProperties"] is False
    n = body["oneOf"][0]["properties"]["n"]
    assert (n["minimum"], n["maximum"]) == (1, 100)
    # The document's rule is the service's: both identifiers, or a null one, are refused.
    assert call(server, "/recommend", {"customer_id": 1, "key": {"type": "email", "value": "a@b.c"}})[0] == 400
    assert call(server, "/recommend", {"customer_id": None, "key": {"type": "email", "value": "a@b.c"}})[0] == 400
    assert call(server, "/recommend", {"customer_id": "12"})[0] == 400  # strict: no number as a string
