-- Version 2: cheaper rows on the purchase hot path (see docs/ARCHITECTURE.md, "The
-- commerce service"). Identifiers compare bytewise (collation "C"): every btree
-- insert and lookup on them skips the locale's comparison. The sweeper's index holds
-- pending orders only, so confirming an order adds no entry to it; dead letters get
-- their own small index for the operator's list.
ALTER TABLE shop_products ALTER COLUMN id TYPE VARCHAR(128) COLLATE "C";
ALTER TABLE shop_orders
    ALTER COLUMN id TYPE VARCHAR(128) COLLATE "C",
    ALTER COLUMN idempotency_key TYPE VARCHAR(128) COLLATE "C",
    ALTER COLUMN product_id TYPE VARCHAR(128) COLLATE "C";
ALTER TABLE shop_payments ALTER COLUMN order_id TYPE VARCHAR(128) COLLATE "C";
DROP INDEX shop_orders_status_next;
CREATE INDEX shop_orders_pending_next ON shop_orders (next_attempt_ms) WHERE status = 'PENDING';
CREATE INDEX shop_orders_failed_created ON shop_orders (created_ms) WHERE status = 'FAILED';
