{#
    The subscriber push's desired state: per account, channel (email / sms) and contact point,
    whether the person should be subscribed in Klaviyo or unsubscribed, with the Recart consent
    (or opt-out) time that says so. The push (orchestration/subscriber_push.py) diffs this against
    its ledger of what Klaviyo accepted and sends only the difference.

    A view over the raw change data, not over the incremental staging table: the push runs every
    15 minutes and when new subscribers land, and must see them without waiting for a dbt build.
    The same macros normalise contact points as staging does.

    Consent is never invented:
      - subscribed   needs consent to the channel AND its consent time (the evidence Klaviyo's
                     historical import records), no later opt-out, and a subscriber not deleted;
      - unsubscribed is an opt-out at or after the last consent (a tie is an opt-out), or consent
                     withdrawn without an opt-out time (consent false after a consent time), decided
                     at the first change row that said so after the last one with consent (from the
                     change history: a stable time, not moved by later unrelated changes) — also of
                     a deleted subscriber, so "opt me out and erase me" still withdraws the consent
                     the push gave;
      - anything else (no consent ever, a deleted subscriber's consent) is not pushed.
    list_id is the list the row goes to under the account's push settings (as the last push run
    mirrored them into klaviyo_push.account_lists; null when that channel is not pushed).
    One desired state per contact point: when two subscribers of a shop share an email or phone,
    the later consent event wins (an opt-out on a tie). Rows that cannot be pushed keep their
    reason in rejection_reason (the push writes them to klaviyo_push.rejections).
#}
{{
  config(
    materialized='view',
    schema='push',
    pre_hook=["create schema if not exists klaviyo_push", "{{ create_push_account_lists() }}"]
  )
}}

with

subscribers as (

    select
        cast(account_id as varchar) as account_id,
        cast(subscriber_id as varchar) as subscriber_id,
        {{ normalize_email('email') }} as email,
        {{ normalize_phone('phone', default_phone_country('account_id')) }} as phone_number,
        nullif(trim(email), '') as email_as_given,
        nullif(trim(phone), '') as phone_as_given,
        coalesce(email_consent, false) as has_email_consent,
        email_consent_at,
        email_opted_out_at,
        coalesce(sms_consent, false) as has_sms_consent,
        sms_consent_at,
        sms_opted_out_at,
        coalesce(deleted, false) as is_deleted

    from {{ latest_changes(source('recart', 'raw_subscribers'), ['account_id', 'subscriber_id']) }}

),

channels as (

    select
        account_id,
        subscriber_id,
        'email' as channel,
        email as contact,
        email_as_given as contact_as_given,
        has_email_consent as has_consent,
        email_consent_at as consent_at,
        email_opted_out_at as opted_out_at,
        is_deleted

    from subscribers
    where email_as_given is not null

    union all

    select
        account_id,
        subscriber_id,
        'sms' as channel,
        phone_number as contact,
        phone_as_given as contact_as_given,
        has_sms_consent as has_consent,
        sms_consent_at as consent_at,
        sms_opted_out_at as opted_out_at,
        is_deleted

    from subscribers
    where phone_as_given is not null

),

-- consent given once (it has a time), now false, and no opt-out at or after it
consent_withdrawn as (

    select
        account_id,
        subscriber_id,
        channel

    from channels
    where
        not has_consent
        and consent_at is not null
        and (opted_out_at is null or opted_out_at < consent_at)

),

-- the few withdrawn subscribers' change history, channel by channel
withdrawn_history as (

    select
        consent_withdrawn.account_id,
        consent_withdrawn.subscriber_id,
        consent_withdrawn.channel,
        history.updated_at,
        coalesce(
            case consent_withdrawn.channel
                when 'email' then history.email_consent else history.sms_consent
            end,
            false
        ) as had_consent

    from {{ source('recart', 'raw_subscribers') }} as history
    inner join consent_withdrawn
        on
            cast(history.account_id as varchar) = consent_withdrawn.account_id
            and cast(history.subscriber_id as varchar) = consent_withdrawn.subscriber_id

),

-- withdrawn at the first change row without the consent after the last one with it
withdrawal_times as (

    select
        account_id,
        subscriber_id,
        channel,
        min(updated_at) filter (
            where not had_consent and updated_at > coalesce(last_with_consent, cast('-infinity' as timestamptz))
        ) as withdrawn_at

    from (
        select
            *,
            max(case when had_consent then updated_at end) over (
                partition by account_id, subscriber_id, channel
            ) as last_with_consent
        from withdrawn_history
    ) as marked
    group by account_id, subscriber_id, channel

),

withdrawals as (

    select
        channels.* exclude (channels.is_deleted),
        case
            when
                channels.opted_out_at is not null
                and (channels.consent_at is null or channels.opted_out_at >= channels.consent_at)
                then channels.opted_out_at
            else withdrawal_times.withdrawn_at
        end as withdrawn_at,
        channels.has_consent and not channels.is_deleted as may_subscribe

    from channels
    left join withdrawal_times
        on
            channels.account_id = withdrawal_times.account_id
            and channels.subscriber_id = withdrawal_times.subscriber_id
            and channels.channel = withdrawal_times.channel

),

decided as (

    select
        * exclude (withdrawn_at, may_subscribe),
        case
            when withdrawn_at is not null then 'unsubscribed'
            when may_subscribe and consent_at is not null then 'subscribed'
        end as desired_state,
        case
            when withdrawn_at is not null then withdrawn_at
            when may_subscribe then consent_at
        end as decided_at,
        case
            when contact is null and channel = 'email' then 'not an email address'
            when contact is null then 'not a phone number in E.164 or a national format'
            when may_subscribe and consent_at is null and opted_out_at is null
                then 'consent without a consent time (no evidence to push)'
        end as rejection_reason

    from withdrawals
    where may_subscribe or withdrawn_at is not null

),

latest_per_contact as (

    select *
    from decided
    where contact is not null and rejection_reason is null
    qualify row_number() over (
            partition by account_id, channel, contact
            order by decided_at desc, desired_state = 'unsubscribed' desc, subscriber_id
        ) = 1

),

one_per_contact as (

    select * from decided
    where contact is null or rejection_reason is not null
    union all
    select * from latest_per_contact

),

account_lists as (

    -- Not a dbt source: the push asset writes it and reads this view, a cycle lineage cannot
    -- show; the pre-hook creates it (macros/push.sql).
    select * from klaviyo_push.account_lists

)

select
    one_per_contact.account_id,
    one_per_contact.channel,
    one_per_contact.contact,
    one_per_contact.subscriber_id,
    one_per_contact.desired_state,
    one_per_contact.decided_at,
    case one_per_contact.channel
        when 'email' then account_lists.email_list_id
        when 'sms' then account_lists.sms_list_id
    end as list_id,
    one_per_contact.contact_as_given,
    one_per_contact.rejection_reason

from one_per_contact
left join account_lists
    on one_per_contact.account_id = account_lists.account_id
