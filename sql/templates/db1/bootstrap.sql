-- The intake schema and its version ledger. Safe to run on every `intake up`.
create schema if not exists intake;

create table if not exists intake.schema_version (
    version    integer primary key,
    name       text not null,
    applied_at timestamptz not null default now()
);

-- Which pgmq DB1 runs on, recorded once by `intake up` (extension or the SQL
-- bundled with the pgmq Python package), so status can report it without guessing.
create table if not exists intake.pgmq_install (
    singleton    boolean primary key default true check (singleton),
    source       text not null check (source in ('extension', 'bundled-sql', 'existing-sql')),
    version      text,
    installed_at timestamptz not null default now()
);
