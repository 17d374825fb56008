{#
    Emails and phone numbers from Recart that could not be normalised, with the reason: they are
    left out of matching and of the subscriber push, and kept here so nothing is lost silently.
#}
with

subscribers as (

    select * from {{ ref('stg_recart__subscribers') }}

),

rejected_emails as (

    select
        account_id,
        subscriber_id,
        'email' as contact_field,
        email_as_given as value_as_given,
        'not an email address' as reason

    from subscribers
    where email_as_given is not null and email is null

),

rejected_phones as (

    select
        account_id,
        subscriber_id,
        'phone' as contact_field,
        phone_as_given as value_as_given,
        'not a phone number in E.164 or a national format of ' || phone_default_country as reason

    from subscribers
    where phone_as_given is not null and phone_number is null

),

rejections as (

    select * from rejected_emails
    union all
    select * from rejected_phones

)

select * from rejections
