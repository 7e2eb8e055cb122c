-- Version 1 of the commerce schema (see docs/ARCHITECTURE.md, "The commerce service").
CREATE TABLE shop_products (
    id            VARCHAR(128) PRIMARY KEY,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    price_cents   BIGINT NOT NULL,
    stock         BIGINT NOT NULL CHECK (stock >= 0),
    initial_stock BIGINT NOT NULL,
    version       BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE shop_orders (
    id              VARCHAR(128) PRIMARY KEY,
    idempotency_key VARCHAR(128) NOT NULL UNIQUE,
    fingerprint     TEXT NOT NULL,
    product_id      VARCHAR(128) NOT NULL,
    customer_id     TEXT NOT NULL,
    quantity        BIGINT NOT NULL,
    amount_cents    BIGINT NOT NULL,
    status          VARCHAR(16) NOT NULL,
    step            TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    reason          TEXT,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    expires_ms      BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL
);
CREATE INDEX shop_orders_product_status ON shop_orders (product_id, status);
CREATE INDEX shop_orders_status_next ON shop_orders (status, next_attempt_ms);
CREATE TABLE shop_payments (
    order_id     VARCHAR(128) PRIMARY KEY,
    amount_cents BIGINT NOT NULL,
    status       TEXT NOT NULL,
    updated_ms   BIGINT NOT NULL
);
CREATE TABLE shop_outbox (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_ms BIGINT NOT NULL,
    events     TEXT NOT NULL
);
CREATE TABLE shop_consumed_events (
    consumer VARCHAR(128) NOT NULL,
    event_id VARCHAR(200) NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
