-- Reverts revision 0002: the URL check, the event list check and
-- is_blocked_address as revision 0001 had them.

-- True for addresses a webhook must never reach: loopback, private,
-- link-local (cloud metadata), CGNAT, multicast, reserved, documentation,
-- and their IPv6 forms. IPv4-mapped and NAT64 addresses are judged by the
-- IPv4 address they carry; deprecated 6to4 and IPv4-compatible are refused.
create or replace function outbox.is_blocked_address(p_addr inet) returns boolean
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    if family(p_addr) = 6 then
        if p_addr <<= '::ffff:0:0/96' then
            return outbox.is_blocked_address('0.0.0.0'::inet + (p_addr - '::ffff:0:0'::inet));
        end if;
        if p_addr <<= '64:ff9b::/96' then
            return outbox.is_blocked_address('0.0.0.0'::inet + (p_addr - '64:ff9b::'::inet));
        end if;
        return p_addr <<= '::/96' or p_addr <<= 'fc00::/7' or p_addr <<= 'fe80::/10'
            or p_addr <<= 'fec0::/10' or p_addr <<= 'ff00::/8' or p_addr <<= '2001:db8::/32'
            or p_addr <<= '100::/64' or p_addr <<= '2001::/23' or p_addr <<= '2002::/16';
    end if;
    return p_addr <<= '0.0.0.0/8' or p_addr <<= '10.0.0.0/8' or p_addr <<= '100.64.0.0/10'
        or p_addr <<= '127.0.0.0/8' or p_addr <<= '169.254.0.0/16' or p_addr <<= '172.16.0.0/12'
        or p_addr <<= '192.0.0.0/24' or p_addr <<= '192.0.2.0/24' or p_addr <<= '192.88.99.0/24'
        or p_addr <<= '192.168.0.0/16' or p_addr <<= '198.18.0.0/15' or p_addr <<= '198.51.100.0/24'
        or p_addr <<= '203.0.113.0/24' or p_addr <<= '224.0.0.0/4' or p_addr <<= '240.0.0.0/4';
end $$;

-- Syntax, scheme, credentials and literal-address checks. Names that resolve
-- to private addresses are caught by the worker at send time (it resolves and
-- connects to the checked address); SQL cannot resolve DNS.
create or replace function outbox.check_url(p_url text) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    cfg outbox.config;
    m text[];
    scheme text;
    authority text;
    host text;
    port integer;
    labels text[];
    addr inet;
begin
    select * into cfg from outbox.config;
    if p_url is null or length(p_url) = 0 then
        raise exception 'invalid URL: empty' using errcode = 'OW003';
    end if;
    if length(p_url) > 2048 then
        raise exception 'invalid URL: longer than 2048 characters' using errcode = 'OW003';
    end if;
    if p_url ~ '[[:space:][:cntrl:]]' then
        raise exception 'invalid URL "%": contains whitespace or control characters', p_url using errcode = 'OW003';
    end if;
    m := regexp_match(p_url, '^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([/?][^#]*)?(#.*)?$');
    if m is null then
        raise exception 'invalid URL "%": expected scheme://host[:port]/path', p_url using errcode = 'OW003';
    end if;
    scheme := lower(m[1]);
    authority := m[2];
    if scheme not in ('http', 'https') then
        raise exception 'invalid URL "%": scheme "%" is not http or https', p_url, scheme using errcode = 'OW003';
    end if;
    if scheme = 'http' and not cfg.allow_http then
        raise exception 'invalid URL "%": https is required', p_url
            using errcode = 'OW003', hint = 'set outbox.config.allow_http for development';
    end if;
    if m[4] is not null then
        raise exception 'invalid URL "%": fragments (#...) are not allowed', p_url using errcode = 'OW003';
    end if;
    if position('@' in authority) > 0 then
        raise exception 'invalid URL: credentials in the URL are not allowed' using errcode = 'OW003';
    end if;
    m := regexp_match(authority, '^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:([0-9]{1,5}))?$');
    if m is null then
        raise exception 'invalid URL "%": invalid host or port', p_url using errcode = 'OW003';
    end if;
    host := lower(m[1]);
    if m[3] is not null then
        port := m[3]::integer;
        if port < 1 or port > 65535 then
            raise exception 'invalid URL "%": port out of range', p_url using errcode = 'OW003';
        end if;
    end if;
    if left(host, 1) = '[' then
        begin
            addr := substring(host from 2 for length(host) - 2)::inet;
        exception when others then
            raise exception 'invalid URL "%": invalid IPv6 address', p_url using errcode = 'OW003';
        end;
    else
        host := rtrim(host, '.');
        labels := string_to_array(host, '.');
        if host = '' or exists (select 1 from unnest(labels) l
                                 where l = '' or length(l) > 63 or l like '-%' or l like '%-') then
            raise exception 'invalid URL "%": invalid host name', p_url using errcode = 'OW003';
        end if;
        -- A numeric last label means an IPv4 literal; resolvers also accept
        -- 127.1, 0x7f.0.0.1 and 2130706433, so only the dotted quad is allowed.
        if labels[cardinality(labels)] ~ '^(0x[0-9a-f]*|[0-9]+)$' then
            if host !~ '^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$' then
                raise exception 'invalid URL "%": IPv4 addresses must be written as four decimal numbers', p_url
                    using errcode = 'OW003';
            end if;
            addr := host::inet;
        end if;
    end if;
    if not cfg.allow_private_networks then
        if addr is not null and outbox.is_blocked_address(addr) then
            raise exception 'invalid URL "%": % is a loopback, private, link-local or reserved address', p_url, host(addr)
                using errcode = 'OW003', hint = 'set outbox.config.allow_private_networks for development';
        end if;
        if host = 'localhost' or host like '%.localhost' or host like '%.internal' or host like '%.local'
           or host in ('metadata', 'instance-data') then
            raise exception 'invalid URL "%": host "%" is internal', p_url, host
                using errcode = 'OW003', hint = 'set outbox.config.allow_private_networks for development';
        end if;
    end if;
    return p_url;
end $$;

create or replace function outbox.check_events(p_events text[]) returns text[]
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    e text;
    result text[] := '{}';
begin
    if p_events is null or cardinality(p_events) = 0 then
        raise exception 'events must list at least one event type' using errcode = 'OW002';
    end if;
    foreach e in array p_events loop
        if e is null then
            raise exception 'events must not contain null' using errcode = 'OW002';
        end if;
        if e = '*' then
            null;
        elsif e like '%.*' then
            if not exists (select 1 from outbox.event_types t
                            where starts_with(t.name, left(e, -1))) then
                raise exception 'unknown event type pattern "%": no event type starts with "%"', e, left(e, -1)
                    using errcode = 'OW002', hint = 'see select name from outbox.event_types';
            end if;
        elsif not exists (select 1 from outbox.event_types t where t.name = e) then
            raise exception 'unknown event type "%"', e
                using errcode = 'OW002', hint = 'see select name from outbox.event_types';
        end if;
        if not e = any(result) then
            result := result || e;
        end if;
    end loop;
    return result;
end $$;

drop function outbox.set_config(text, text);
drop function outbox.address_refusal(inet, boolean);
drop function outbox.address_kind(inet);
