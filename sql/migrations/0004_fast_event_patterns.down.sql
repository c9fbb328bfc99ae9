-- Back to 0001's definition of event_patterns.
create or replace function outbox.event_patterns(p_event_type text) returns text[]
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select array['*', p_event_type] || coalesce(array_agg(array_to_string(parts[1:n], '.') || '.*'), '{}')
      from (select string_to_array(p_event_type, '.') as parts) p,
           generate_series(1, cardinality(parts) - 1) as n
$$;

comment on column outbox.events.body is 'Exact bytes POSTed for this event, fixed at dispatch, identical for every webhook and retry';
