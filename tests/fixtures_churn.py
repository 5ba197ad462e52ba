"""A tiny history for the churn population, labels and trend features, built around one cutoff.

``CHURN_AS_OF`` = c = 2024-07-01 00:00 UTC; the windows it implies (2024 is a leap year):

- population lookback [c - 365 d, c) = [2023-07-02, 2024-07-01);
- label window [c, c + 90 d) = [2024-07-01, 2024-09-29);
- trend windows: 30d [2024-06-01, c), 90d [2024-04-02, c), prev_90d [2024-01-03, 2024-04-02),
  prev_180d [2023-10-05, 2024-04-02).

The last sale in the store is the anonymous one on 2024-10-15 12:00, so the data end at
2024-10-16 00:00 and the latest cutoff a 90-day label fits is 2024-07-18.
"""

from __future__ import annotations

from datetime import datetime

from tests.fixtures_history import History, line, ret

CHURN_AS_OF = datetime(2024, 7, 1)

#: Keys of the churn history's customers (record_key -> customer_id).
CHURN_KEYS = {
    "k_ann": 1, "k_ben": 2, "k_cat": 3, "k_dee": 4, "k_eve": 5, "k_fay": 6, "k_gus": 7, "k_hal": 8, "k_ian": 9,
}


def churn_history() -> History:
    """Nine customers around ``CHURN_AS_OF`` (amounts in the comments are net of returns before c).

    - Ann (1): A1 web 2023-11-01 (SHIRT 20; prev_180d), A2 app 2024-02-01 (BOOK 2x15 = 30; prev_90d),
      A3 web 2024-05-01 (SHIRT 2x20, one returned 2024-05-10 for 20: net 20; 90d), A4 store 2024-06-10
      (MUG 10, returned 2024-07-05: after c, so still 10; 30d), A5 web 2024-08-01 (in the label window).
    - Ben (2): B1 web 2023-09-01 (SHIRT 20): in the lookback, before every trend window; nothing later.
    - Cat (3): C1 2023-06-01 (before the lookback) and C2 2024-07-15: not in the population.
    - Dee (4): D1 store 2024-06-30 23:59:59 (BOOK 15); D2 web 2024-08-01 postage only (not a purchase);
      D3 web exactly at c + 90 d = 2024-09-29 00:00 (outside the label window).
    - Eve (5): E1 web 2024-03-01 (MUG 2x10, fully returned 2024-03-05: net 0; prev_90d), E2 app exactly
      at c - 90 d = 2024-04-02 00:00 (BOOK 15: in 90d, not in prev_90d), E3 web exactly at c (a purchase
      in the label window, not in the features).
    - Fay (6): F1 exactly at c - 365 d = 2023-07-02 00:00 (SHIRT 20): in the population; nothing later.
    - Gus (7): G1 2023-07-01 23:59:59, one second before the lookback: not in the population.
    - Hal (8): H1 store 2024-01-02 23:00 (MUG 10: prev_180d, one hour before prev_90d), H2 web guest
      2024-09-28 23:59 (the label window's last minute).
    - Ian (9): I1 web 2024-03-15 (SHIRT 20; prev_90d), and a late line of I1 booked 2024-08-01: the order
      is dated by its first line, so that is no purchase in the label window.
    - An unknown key buys 2024-08-01 and an anonymous store sale on 2024-10-15 12:00 is the last sale.
    """
    d = datetime
    h = History()
    h.items = [
        {"item_id": "SHIRT", "name": "Shirt", "category": "apparel", "price": 20.0, "active": True, "is_product": True},
        {"item_id": "MUG", "name": "Mug", "category": "home", "price": 10.0, "active": True, "is_product": True},
        {"item_id": "BOOK", "name": "Book", "category": "books", "price": 15.0, "active": True, "is_product": True},
        {"item_id": "POST", "name": "Postage", "category": None, "price": 5.0, "active": True, "is_product": False},
    ]
    h.identity = [{"key_hash": k, "key_type": "account", "customer_id": c} for k, c in CHURN_KEYS.items()]
    h.lines = [
        line("A1", "OA1", "web", d(2023, 11, 1, 10), "k_ann", "SHIRT", 1, 20.0),
        line("A2", "OA2", "app", d(2024, 2, 1, 10), "k_ann", "BOOK", 2, 15.0),
        line("A3", "OA3", "web", d(2024, 5, 1, 10), "k_ann", "SHIRT", 2, 20.0),
        line("A4", "OA4", "store", d(2024, 6, 10, 12), "k_ann", "MUG", 1, 10.0),
        line("A5", "OA5", "web", d(2024, 8, 1, 9), "k_ann", "SHIRT", 1, 20.0),
        line("B1", "OB1", "web", d(2023, 9, 1, 10), "k_ben", "SHIRT", 1, 20.0),
        line("C1", "OC1", "web", d(2023, 6, 1, 10), "k_cat", "SHIRT", 1, 20.0),
        line("C2", "OC2", "web", d(2024, 7, 15, 10), "k_cat", "SHIRT", 1, 20.0),
        line("D1", "OD1", "store", d(2024, 6, 30, 23, 59, 59), "k_dee", "BOOK", 1, 15.0),
        line("D2", "OD2", "web", d(2024, 8, 1, 10), "k_dee", "POST", 1, 5.0),
        line("D3", "OD3", "web", d(2024, 9, 29), "k_dee", "SHIRT", 1, 20.0),
        line("E1", "OE1", "web", d(2024, 3, 1, 10), "k_eve", "MUG", 2, 10.0),
        line("E2", "OE2", "app", d(2024, 4, 2), "k_eve", "BOOK", 1, 15.0),
        line("E3", "OE3", "web", d(2024, 7, 1), "k_eve", "MUG", 1, 10.0),
        line("F1", "OF1", "web", d(2023, 7, 2), "k_fay", "SHIRT", 1, 20.0),
        line("G1", "OG1", "web", d(2023, 7, 1, 23, 59, 59), "k_gus", "SHIRT", 1, 20.0),
        line("H1", "OH1", "store", d(2024, 1, 2, 23), "k_hal", "MUG", 1, 10.0),
        line("H2", "OH2", "web", d(2024, 9, 28, 23, 59), "k_hal", "BOOK", 1, 15.0, is_guest=True),
        line("I1", "OI1", "web", d(2024, 3, 15, 10), "k_ian", "SHIRT", 1, 20.0),
        line("I2", "OI1", "web", d(2024, 8, 1, 10), "k_ian", "MUG", 1, 10.0),
        line("U1", "OU1", "web", d(2024, 8, 1, 11), "k_unknown", "SHIRT", 1, 20.0),
        line("Z1", "OZ1", "store", d(2024, 10, 15, 12), None, "SHIRT", 1, 20.0),
    ]
    h.returns = [
        ret("RA3", "A3", 1, 20.0, d(2024, 5, 10, 9)),
        ret("RA4", "A4", 1, 10.0, d(2024, 7, 5, 9)),
        ret("RE1", "E1", 2, 20.0, d(2024, 3, 5, 9)),
    ]
    return h
