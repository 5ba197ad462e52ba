"""Identity resolution on hand-made cases: chains merge, ids stay stable, merges are recorded, and the
SQL and Python key normalisations agree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from features.identity import customer_for_key, hash_key, identity_summary, normalise_key, normalise_sql
from features.discovery import discover
from features.ingest import ingest
from features.schema import KeyType
from features.store import connect, connect_memory
from tests.conftest import KEYS_HEADER, NOW, ORDER_HEADER, RECEIPT_HEADER, write_csv


def _order(order_id, account="", email="", device="", channel="web"):
    return [order_id, "1", "2024-01-05 10:00", account, email, device, "I1", 1, 10.0, "", "", channel, "UK"]


def _run(settings, con, folder):
    inputs, _ = discover(folder)
    return ingest(con, inputs, settings, now=NOW)


@pytest.mark.data
def test_chain_of_keys_across_channels_is_one_customer(settings, tmp_path):
    # a~b on a web order (account + e-mail), b~c through a loyalty sign-up (e-mail + card),
    # c on a store receipt, d = device on an app order with the account: one person.
    raw = tmp_path / "raw"
    write_csv(raw, "orders.csv", ORDER_HEADER, [
        _order("1", account="acc-1", email="Ann@Example.com"),
        _order("2", account="acc-1", device="DEV-9", channel="app"),
        _order("3", email="other@example.com"),
    ])
    write_csv(raw, "customer_keys.csv", KEYS_HEADER, [["", " ann+loyalty@example.com", "07700 900123", "7777-1", ""]])
    write_csv(raw, "store_receipts.csv", RECEIPT_HEADER, [["S1", "1", "2024-02-01", "ST1", "7777 1", "I1", 1, 3.0]])
    con = connect(settings)
    result = _run(settings, con, raw)
    assert result.identity.customers == 2
    ann = {customer_for_key(con, kt, v, settings) for kt, v in [
        (KeyType.ACCOUNT, "acc-1"), (KeyType.EMAIL, "ann@example.com"), (KeyType.DEVICE, "dev-9"),
        (KeyType.LOYALTY_CARD, "77771"), (KeyType.PHONE, "+44 7700 900123")]}
    assert len(ann) == 1 and None not in ann
    assert customer_for_key(con, KeyType.EMAIL, "other@example.com", settings) not in ann
    summary = identity_summary(con)
    assert (summary.keys, summary.customers) == (6, 2)
    assert summary.keys_by_type == {"account": 1, "device": 1, "email": 2, "loyalty_card": 1, "phone": 1}


@pytest.mark.data
def test_ids_are_stable_and_a_merge_is_recorded(settings, tmp_path):
    con = connect(settings)
    write_csv(tmp_path / "d1", "orders.csv", ORDER_HEADER, [
        _order("1", account="a"), _order("2", email="b@x.com"), _order("3", account="z")])
    _run(settings, con, tmp_path / "d1")
    before = {k: customer_for_key(con, KeyType.ACCOUNT if k in "az" else KeyType.EMAIL,
                                  k if k in "az" else "b@x.com", settings) for k in "abz"}
    assert len(set(before.values())) == 3

    # Day 2: account a checks out with e-mail b (a~b), and a brand-new customer appears.
    write_csv(tmp_path / "d2", "orders.csv", ORDER_HEADER, [
        _order("4", account="a", email="B@X.com"), _order("5", account="new")])
    result = _run(settings, con, tmp_path / "d2")
    assert (result.identity.merges, result.identity.new_customers) == (1, 1)
    survivor = min(before["a"], before["b"])
    assert customer_for_key(con, KeyType.ACCOUNT, "a", settings) == survivor
    assert customer_for_key(con, KeyType.EMAIL, "b@x.com", settings) == survivor
    assert customer_for_key(con, KeyType.ACCOUNT, "z", settings) == before["z"]  # untouched
    new_id = customer_for_key(con, KeyType.ACCOUNT, "new", settings)
    assert new_id > max(before.values())  # never reuses an id
    merges = con.execute("SELECT merged_id, into_id, ingest_id FROM identity_merges").fetchall()
    assert merges == [(max(before["a"], before["b"]), survivor, 2)]


@pytest.mark.unit
@pytest.mark.parametrize(("key_type", "variants"), [
    (KeyType.EMAIL, ["Jane.Doe@Example.com", " jane.doe@example.com ", "jane.doe+shop@example.com"]),
    (KeyType.PHONE, ["+44 7700 900123", "07700900123", "0044-7700-900-123", "(0)7700 900 123"]),
    (KeyType.LOYALTY_CARD, ["1234 5678", "1234-5678", "12345678"]),
])
def test_normalisation_makes_variants_one_key(key_type, variants, settings):
    assert len({hash_key(key_type, v, settings) for v in variants}) == 1


@pytest.mark.unit
def test_salt_changes_every_hash(settings):
    from features.settings import load_settings

    other = load_settings(data_dir=settings.data_dir, identity_salt="another-salt")
    assert hash_key(KeyType.EMAIL, "a@b.c", settings) != hash_key(KeyType.EMAIL, "a@b.c", other)
    assert hash_key(KeyType.EMAIL, "  ", settings) is None


_key_text = st.text(alphabet=st.sampled_from(list("aAbZ09+@.-_ ()\t")), max_size=16)


@pytest.mark.unit
@hsettings(max_examples=150, deadline=None)
@given(key_type=st.sampled_from(list(KeyType)), value=_key_text)
def test_sql_and_python_normalisation_agree(key_type, value):
    from features.settings import load_settings

    con = connect_memory(load_settings())
    sql = normalise_sql(key_type, "$value", "44")
    (from_sql,) = con.execute(f"SELECT {sql}", {"value": value}).fetchall()[0]
    assert from_sql == normalise_key(key_type, value, "44")
