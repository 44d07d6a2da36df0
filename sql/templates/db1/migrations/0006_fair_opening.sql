-- 0006: a pool's fair opening (intake gateway): the buyers who arrived before
-- opens_at, and the seeded shuffle they were admitted in. Logged: a receipt
-- handed to a buyer, and the seed an auditor replays, survive a crash.

create table intake.waiting_room (
    pool_id     text not null,
    user_id     text not null,
    receipt     uuid not null default gen_random_uuid(),
    arrival_no  bigint generated always as identity,
    arrived_at  timestamptz not null default clock_timestamp(),
    -- Set at the opening: the place in the shuffled order, and the claim's answer.
    admitted_no integer,
    outcome     text,
    unit_no     bigint,
    primary key (pool_id, user_id)
);

create table intake.openings (
    pool_id      text primary key,
    -- Python's random.Random(seed).shuffle over the waiting buyers in arrival order.
    seed         bigint not null,
    waiting      integer not null,
    opened_at    timestamptz not null default clock_timestamp(),
    completed_at timestamptz
);

-- Like every intake table (0005): no API role reads or writes a row, even
-- where a Supabase project exposes the intake schema.
alter table intake.waiting_room enable row level security;
alter table intake.openings enable row level security;
