{#
    relationships, scoped to the Recart account: every (account_id, <column>) of the model exists
    as (account_id, <field>) in `to`. Ids are only unique within an account.
#}
{% test relationships_within_account(model, column_name, to, field) %}

    select
        child.account_id,
        child.{{ column_name }}

    from {{ model }} as child
    left join {{ to }} as parent
        on
            child.account_id = parent.account_id
            and child.{{ column_name }} = parent.{{ field }}
    where
        child.{{ column_name }} is not null
        and parent.{{ field }} is null

{% endtest %}
