-- Our one write to the product's tables goes through this function: our consumer's row in
-- cn_relay.consumer_offsets, and no other row. Under least privilege a DBA creates it (as a role
-- that may write consumer_offsets) from `search-migration db grants`, and our role may only EXECUTE it;
-- where it exists already it is left as it is. Locally (a superuser) it is created here.
DO $$
BEGIN
    IF to_regprocedure('cn_search.set_consumer_offset(text, bigint)') IS NULL THEN
        CREATE FUNCTION cn_search.set_consumer_offset(p_consumer text, p_seq bigint) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $f$
        BEGIN
            IF p_consumer IS DISTINCT FROM 'search-migration' THEN
                RAISE EXCEPTION 'search_migration may only move its own consumer offset';
            END IF;
            INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES (p_consumer, p_seq)
            ON CONFLICT (consumer) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now();
        END $f$;
    END IF;
END $$;
