-- requires: timescaledb
-- Daily statistics (0420) kept on a hypertable too. On a new database 0090 made observations a
-- hypertable before 0420 ran, and 0420 created no triggers (transition tables are not allowed there);
-- here they come as row-level triggers (0090's observation_day_stale_row_triggers), so the API reads a
-- year's daily trend from observation_day_stats on TimescaleDB as on plain PostgreSQL, and a late value
-- -- also one written into a compressed chunk -- marks its day stale like any other.
SELECT observation_day_stale_row_triggers();

-- Nothing to mark stale: without the triggers the API never stored a day (day_stats_maintained was
-- false), so the first read builds every day from the raw values; and on a plain database turned
-- TimescaleDB, 0090 swapped the triggers in one transaction, so no value went unmarked.
