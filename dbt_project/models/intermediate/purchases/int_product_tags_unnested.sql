{#
    One row per (product, tag); tags lower-cased and trimmed so bought_product_tagged('Hiking')
    and a product tagged " hiking" meet.
#}
with

products as (

    select * from {{ ref('stg_recart__products') }}

),

tags_unnested as (

    select
        products.account_id,
        products.product_id,
        unnest(products.product_tags) as product_tag

    from products

),

tags as (

    select distinct
        account_id,
        product_id,
        lower(trim(product_tag)) as product_tag

    from tags_unnested
    where nullif(trim(product_tag), '') is not null

)

select * from tags
