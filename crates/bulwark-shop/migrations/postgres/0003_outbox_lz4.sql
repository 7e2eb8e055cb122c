-- Version 3: the outbox's event batches (up to ~200 KB of JSON per group commit) are
-- compressed with lz4 instead of pglz, which showed in PostgreSQL's profile under load;
-- measured ~4–9% less PostgreSQL CPU per purchase (docs/BENCHMARKS.md, "Outbox
-- compression"). A server built without lz4 keeps pglz: the same rows, a little more CPU.
DO $$
BEGIN
    ALTER TABLE shop_outbox ALTER COLUMN events SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available on this server; shop_outbox.events keeps pglz';
END
$$;
