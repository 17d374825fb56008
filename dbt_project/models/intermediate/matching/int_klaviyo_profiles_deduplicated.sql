{# A view: its one reader (matching) computes it once; writing its 1M rows cost more (~1 s at bench scale). #}

{#
    Klaviyo profiles are known here through their current group memberships. A profile in several
    groups appears in each spell; its identifiers come from the most recently loaded one.
#}
with

group_members as (

    select * from {{ ref('stg_klaviyo__group_members') }}

),

latest_identifiers as (

    -- the identifiers of the spell first in (loaded_at desc, valid_from desc, group_id asc): an
    -- aggregate per profile took half the time of ranking every current spell with a window
    select
        group_members.account_id,
        group_members.profile_id,
        arg_min(
            {
                'external_id': group_members.external_id,
                'email': group_members.email,
                'phone_number': group_members.phone_number
            },
            (
                -epoch_us(group_members.loaded_at),
                -epoch_us(group_members.valid_from),
                group_members.group_id
            )
        ) as identifiers

    from group_members
    where group_members.is_current
    group by group_members.account_id, group_members.profile_id

),

profiles as (

    select
        account_id,
        profile_id,
        struct_extract(identifiers, 'external_id') as external_id,
        struct_extract(identifiers, 'email') as email,
        struct_extract(identifiers, 'phone_number') as phone_number

    from latest_identifiers

)

select * from profiles
