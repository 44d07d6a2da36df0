-- (c) the ceiling: a round trip and a transaction that does nothing.
select 1;
