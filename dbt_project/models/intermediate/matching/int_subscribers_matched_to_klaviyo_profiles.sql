{{ config(materialized='table') }}

{#
    Recart subscribers matched to Klaviyo profiles of the same account, by the normalised
    identifiers: external id first, then email, then E.164 phone.

    One row per (subscriber, profile). A subscriber may match several profiles (e.g. one by email
    and another by phone: Klaviyo keeps email-only and SMS-only people apart) and keeps them all.
    A profile belongs to the subscribers it matches by its strongest method: a profile matching
    subscriber A by external id and subscriber B by phone belongs to A only; ties (two
    subscribers sharing one email) keep both.
#}
with

subscribers as not materialized (

    select * from {{ ref('stg_recart__subscribers') }}

),

-- materialized: a view, joined three times below
profiles as materialized (

    select * from {{ ref('int_klaviyo_profiles_deduplicated') }}

),

matched_by_external_id as (

    select
        subscribers.account_id,
        subscribers.subscriber_id,
        profiles.profile_id,
        1 as match_rank

    from subscribers
    inner join profiles
        on
            subscribers.account_id = profiles.account_id
            and subscribers.external_id = profiles.external_id

),

matched_by_email as (

    select
        subscribers.account_id,
        subscribers.subscriber_id,
        profiles.profile_id,
        2 as match_rank

    from subscribers
    inner join profiles
        on
            subscribers.account_id = profiles.account_id
            and subscribers.email = profiles.email

),

matched_by_phone as (

    select
        subscribers.account_id,
        subscribers.subscriber_id,
        profiles.profile_id,
        3 as match_rank

    from subscribers
    inner join profiles
        on
            subscribers.account_id = profiles.account_id
            and subscribers.phone_number = profiles.phone_number

),

all_matches as (

    select * from matched_by_external_id
    union all
    select * from matched_by_email
    union all
    select * from matched_by_phone

),

matches_per_pair as (

    select
        account_id,
        subscriber_id,
        profile_id,
        min(match_rank) as match_rank,
        max(case when match_rank = 1 then 1 else 0 end) = 1 as is_matched_by_external_id,
        max(case when match_rank = 2 then 1 else 0 end) = 1 as is_matched_by_email,
        max(case when match_rank = 3 then 1 else 0 end) = 1 as is_matched_by_phone

    from all_matches
    group by account_id, subscriber_id, profile_id

),

strongest_match_per_profile as (

    select
        *,
        min(match_rank) over (partition by account_id, profile_id) as profile_best_rank

    from matches_per_pair

),

matches as (

    select
        account_id,
        subscriber_id,
        profile_id,
        case match_rank
            when 1 then 'external_id'
            when 2 then 'email'
            when 3 then 'phone'
        end as match_method,
        is_matched_by_external_id,
        is_matched_by_email,
        is_matched_by_phone

    from strongest_match_per_profile
    where match_rank = profile_best_rank

)

select * from matches
