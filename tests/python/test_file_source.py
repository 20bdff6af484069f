"""The file source: `CREATE SOURCE ... WITH (connector = 'file', path =
'/dir/*.log')` tails files into the source's topic, one record per line.

The test writes lines the way applications and logrotate do: appends, a
line written in two parts (which must arrive whole, once), a new file
appearing, a rotation (`app.log` renamed to `app.log.1`, which the pattern
no longer matches, with a last line written to the renamed file, then a new
`app.log`), a truncation in place (copytruncate), and a `kill -9` of the
server between writes. The source's topic, read with confluent-kafka, must
hold every line exactly once with its file in a header; a JSON view over
the source counts them; a `format = 'lines'` source gives raw lines to SQL.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

import fluxo_helpers as H
from test_sql import sql


def lines_in_topic(broker, topic: str) -> Counter:
    recs = H.consume_all(broker.bootstrap, topic, timeout=30)
    return Counter(r.value.decode() for part in recs.values() for r in part)


def wait_lines(broker, topic: str, want: Counter, timeout: float = 30) -> Counter:
    def complete():
        got = lines_in_topic(broker, topic)
        return got if not (want - got) else None
    try:
        H.wait_for(complete, timeout=timeout, desc=f"every line in {topic}")
    except AssertionError:
        got = lines_in_topic(broker, topic)
        raise AssertionError(f"missing {list((want - got).items())[:5]}, extra {list((got - want).items())[:5]}")
    time.sleep(0.6)  # a few polls more, so that a line read twice would show
    return lines_in_topic(broker, topic)


def line(i: int, file: str) -> str:
    return json.dumps({"n": i, "file": file, "level": "warn" if i % 3 == 0 else "info"})


@pytest.mark.timeout(240)
def test_file_lines_land_exactly_once_through_rotation_truncation_and_kill_9(broker, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    app, other = logs / "app.log", logs / "other.log"
    want: Counter = Counter()

    def write(path: Path, start: int, n: int, mode: str = "a") -> None:
        with open(path, mode) as f:
            for i in range(start, start + n):
                text = line(i, path.name)
                f.write(text + "\n")
                want[text] += 1

    write(app, 0, 500)
    assert sql(broker, f"""CREATE SOURCE app_logs (n BIGINT, file TEXT, level TEXT)
                           WITH (connector = 'file', path = '{logs}/*.log', format = 'json',
                                 poll_interval = '50ms')""")["message"] == "CREATE SOURCE app_logs"
    topic = "file-app_logs"
    wait_lines(broker, topic, want)

    # A line written in two parts arrives once, whole.
    half = line(500, "app.log")
    with open(app, "a") as f:
        f.write(half[:10])
        f.flush()
        time.sleep(0.3)
        f.write(half[10:] + "\n")
    want[half] += 1
    write(other, 1000, 300)  # a new file
    wait_lines(broker, topic, want)

    # Rotation: the old file keeps its last line, written after the rename.
    os.rename(app, logs / "app.log.1")
    write(logs / "app.log.1", 501, 50)
    write(app, 2000, 200)
    # Truncation in place: the file starts over.
    write(other, 3000, 100, mode="w")
    got = wait_lines(broker, topic, want)
    assert got == want, f"extra {list((got - want).items())[:5]}"

    # kill -9 between writes; lines written while the server is down arrive after.
    write(app, 4000, 300)
    broker.kill9()
    write(app, 5000, 300)
    write(logs / "late.log", 6000, 100)
    broker.start(port=broker.port)
    got = wait_lines(broker, topic, want, timeout=60)
    assert got == want, f"not exactly once across kill -9: extra {list((got - want).items())[:5]}"

    recs = H.consume_all(broker.bootstrap, topic, timeout=30)
    first = next(r for part in recs.values() for r in part)
    assert dict(first.headers)["file"] == str(app).encode(), first.headers

    # The rows reach SQL: a batch query over the source's history.
    warn = sum(n for text, n in want.items() if json.loads(text)["level"] == "warn")
    rows = sql(broker, "SELECT count(*) FROM app_logs WHERE level = 'warn'")["rows"]
    assert rows == [[warn]], rows

    # format = 'lines': each line is the one text column.
    sql(broker, f"""CREATE SOURCE raw_lines (line TEXT)
                    WITH (connector = 'file', path = '{logs}/other.log', format = 'lines', topic = 'raw-lines')""")
    H.wait_for(lambda: sql(broker, "SELECT count(*) FROM raw_lines")["rows"] == [[100]] or None,
               timeout=30, desc="the truncated file's 100 lines in raw_lines")
    rows = sql(broker, "SELECT line FROM raw_lines ORDER BY line LIMIT 1")["rows"]
    assert json.loads(rows[0][0])["file"] == "other.log", rows

    # What cannot work is refused by name.
    err = sql(broker, "CREATE SOURCE bad (a TEXT) WITH (connector = 'file', path = 'relative/*.log')", expect_status=400)
    assert "absolute path" in err["error"], err
    err = sql(broker, f"CREATE SOURCE bad (a TEXT, b TEXT) WITH (connector = 'file', path = '{logs}/x', "
                      "format = 'lines')", expect_status=400)
    assert "exactly one column" in err["error"], err
    err = sql(broker, f"CREATE SOURCE bad (a TEXT) WITH (connector = 'file', path = '{logs}/x', tail = 'yes')",
              expect_status=400)
    assert "unknown option 'tail'" in err["error"] and "poll_interval" in err["error"], err
