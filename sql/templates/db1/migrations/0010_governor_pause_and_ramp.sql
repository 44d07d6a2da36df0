-- 0010: what the webhook governor needs to learn a rate across a pause.
--
-- paused_at: when the Retry-After in force began, so that the seconds the
-- fleet was told to wait are not read as seconds the provider accepted
-- nothing. ramp_from: the calls a second a ramp starts from (5 after an
-- outage; half the first estimate after a provider's first 429).
-- learned_hold_s: how long a learned rate holds before it rises again: long
-- when the provider sends Retry-After (each 429 then pauses the fleet), short
-- when it does not (a 429 then costs one call).
alter table intake.webhook_governors add column if not exists paused_at timestamptz;
alter table intake.webhook_governors add column if not exists ramp_from double precision
    not null default 5;
alter table intake.webhook_governors add column if not exists learned_hold_s double precision
    not null default 20;
