"""Python side of `cargo bench --bench compare`.

Runs the workloads of the comparison bench with Python's `multiprocessing`
and `concurrent.futures`, each with its defaults, and prints one JSON object
on stdout: {"python": version, "results": {name: {"seconds": [...], "items": n}}},
a result carrying a "note" where the workload's form depends on the machine:
the float-payload workloads send numpy arrays when `import numpy` works, and
otherwise `array('d')` (this script installs nothing), saying which.

Usage: python3 compare.py [--quick]
The Rust bench starts this script; it can also be run by hand.
"""

import json
import math
from array import array
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

try:
    import numpy
except ImportError:
    numpy = None

WORKERS = 2
ALPHABET = "abcdefghijklmnopqrstuvwxyz" * 3


def inc(x):
    return x + 1


def identity(x):
    return x


def is_prime(n):
    # The same trial division as the Rust `is_prime` of the bench.
    if n < 2:
        return False
    for i in range(2, math.isqrt(n) + 1):
        if n % i == 0:
            return False
    return True


def sum_floats(values):
    return float(values.sum()) if numpy is not None else sum(values)


def double_floats(values):
    if numpy is not None:
        return values * 2.0
    return array("d", [v * 2.0 for v in values])


def floats(n):
    """n floats 0.0, 1.0, ...: a numpy array, or an array('d') without numpy."""
    if numpy is not None:
        return numpy.arange(n, dtype=numpy.float64)
    return array("d", range(n))


FLOATS_NOTE = "numpy" if numpy is not None else "array('d'); numpy absent"


def text_of(i, shortest, longest):
    # The same strings as the Rust `text_of` of the bench.
    n = shortest + (i * 2_654_435_761) % (longest - shortest + 1)
    start = i % 26
    return ALPHABET[start : start + n]


def upper_record(record):
    return {"id": record["id"], "text": record["text"].upper()}


def timed(f, repeat):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def queue_consumer(q, n):
    for _ in range(n):
        q.get()


def main():
    quick = "--quick" in sys.argv
    only = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")]
    only = set(only[0].split(",")) if only else None
    scale = 10 if quick else 1
    results = {}

    def want(name):
        return only is None or name in only

    def record(name, seconds, items, note=None):
        results[name] = {"seconds": seconds, "items": items}
        if note is not None:
            results[name]["note"] = note
        print(f"python {name}: median {statistics.median(seconds):.6f} s", file=sys.stderr)

    fork = multiprocessing.get_context("fork")
    default = multiprocessing  # Linux default start method (fork on 3.11)

    with default.Pool(WORKERS) as pool:
        pool.apply(inc, (1,))  # workers up

        if want("primes"):
            n = 3_000_000 // scale
            record(
                "primes",
                timed(lambda: sum(pool.map(is_prime, range(n))), 3),
                n,
            )

        if want("apply"):
            n = 5_000 // scale

            def apply_loop():
                for i in range(n):
                    pool.apply(inc, (i,))

            record("apply", timed(apply_loop, 5), n)

        if want("map"):
            n = 1_000_000 // scale
            record("map", timed(lambda: pool.map(inc, range(n)), 5), n)

        if want("imap"):
            n = 100_000 // scale

            def imap_loop():
                s = 0
                for r in pool.imap(inc, (x for x in range(n))):
                    s += r
                return s

            record("imap", timed(imap_loop, 3), n)

        if want("bytes"):
            payload = bytes(64 << 20)

            def bytes_round_trip():
                out = pool.apply(identity, (payload,))
                assert len(out) == len(payload)

            record("bytes", timed(bytes_round_trip, 3), len(payload))

        payload_len = 64 << 20
        if want("f64"):
            values = floats(payload_len // 8)
            expected = sum_floats(values)

            def f64_one_way():
                assert pool.apply(sum_floats, (values,)) == expected

            record("f64", timed(f64_one_way, 3), payload_len, FLOATS_NOTE)

        if want("f64rt"):
            values = floats(payload_len // 8)

            def f64_round_trip():
                out = pool.apply(double_floats, (values,))
                assert len(out) == len(values) and out[-1] == 2.0 * values[-1]

            record("f64rt", timed(f64_round_trip, 3), payload_len, FLOATS_NOTE)

        if want("record64"):
            name = "series".ljust(64, "-")
            series = {"name": name, "values": floats((payload_len - len(name)) // 8)}

            def series_round_trip():
                out = pool.apply(identity, (series,))
                assert out["name"] == name and len(out["values"]) == len(series["values"])

            record("record64", timed(series_round_trip, 3), payload_len, "a dict of the name and " + FLOATS_NOTE)

        if want("records"):
            n = 200_000 // scale
            records = [{"id": i, "text": text_of(i, 20, 40)} for i in range(n)]
            record("records", timed(lambda: pool.map(upper_record, records), 3), n)

        if want("strings"):
            n = 1_000_000 // scale
            strings = [text_of(i, 8, 24) for i in range(n)]
            record("strings", timed(lambda: pool.map(len, strings), 3), n)

    if want("start"):
        def start_one_shutdown():
            pool = fork.Pool(WORKERS)
            pool.apply(inc, (1,))
            pool.close()
            pool.join()

        record("start", timed(start_one_shutdown, 10), 1)

    if want("queue"):
        n = 200_000 // scale

        def queue_round():
            q = default.Queue()
            p = default.Process(target=queue_consumer, args=(q, n))
            p.start()
            for i in range(n):
                q.put(i)
            p.join()

        record("queue", timed(queue_round, 3), n)

    if want("futures"):
        n = 20_000 // scale
        with ProcessPoolExecutor(max_workers=WORKERS) as ex:
            list(ex.map(inc, range(WORKERS)))  # workers up

            def submit_all():
                futures = [ex.submit(inc, i) for i in range(n)]
                s = 0
                for f in as_completed(futures):
                    s += f.result()
                return s

            record("futures", timed(submit_all, 5), n)

    if want("rss"):
        # Idle worker resident memory, for the memory row (reported as "items").
        pool = fork.Pool(WORKERS)
        pool.apply(inc, (1,))
        rss = max(vm_rss(w.pid) for w in pool._pool)
        pool.close()
        pool.join()
        record("rss", [0.0], rss)

    print(json.dumps({"python": sys.version.split()[0], "results": results}))


if __name__ == "__main__":
    main()
