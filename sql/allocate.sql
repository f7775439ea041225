-- allocate(): worked examples with known answers, and every refusal.
\set ECHO none
\pset format unaligned
\pset tuples_only true
\pset pager off
SET search_path = public, mspbill;
SELECT plan(32);

-- 100.00 three ways: 33.33 each plus one cent, to the first row
SELECT is(allocate(100, ARRAY[1,1,1]::numeric[]), ARRAY[33.34,33.33,33.33], '100 split 1:1:1');
-- 0.05 split 30:70: exact 1.5 and 3.5 cents; equal remainders, the earlier wins
SELECT is(allocate(0.05, ARRAY[30,70]::numeric[]), ARRAY[0.02,0.03], '0.05 split 30:70');
-- Hamilton apportionment of 10 seats by votes 5000:3000:1500:500
-- quotas 5, 3, 1.5, 0.5: floors 5,3,1,0 leave 1 seat; remainders .5 and .5 tie, earlier wins
SELECT is(allocate(10, ARRAY[5000,3000,1500,500]::numeric[], 1), ARRAY[5,3,2,0]::numeric[],
          'seats by votes, tie to the earlier party');
-- 7 seats by 47:16:15:12:10 -> quotas 3.29,1.12,1.05,.84,.70: floors 3,1,1,0,0 and 2 left to .84 and .70
SELECT is(allocate(7, ARRAY[47,16,15,12,10]::numeric[], 1), ARRAY[3,1,1,1,1]::numeric[],
          'seats by votes, largest remainders');
SELECT is(allocate(-100, ARRAY[1,1,1]::numeric[]), ARRAY[-33.34,-33.33,-33.33], 'a credit is split as its absolute value');
SELECT is(allocate(0, ARRAY[1,2]::numeric[]), ARRAY[0.00,0.00], 'a zero total gives zeros');
SELECT is(allocate(10, ARRAY[0,1,0]::numeric[]), ARRAY[0.00,10.00,0.00], 'weight 0 gets 0');
SELECT is(allocate(1, ARRAY[0.5,0.25,0.25]::numeric[]), ARRAY[0.50,0.25,0.25], 'fractional weights');
SELECT is(allocate(1.00, ARRAY[1,1,1]::numeric[], 0.05), ARRAY[0.35,0.35,0.30], 'a minor unit of 0.05');
SELECT is(allocate(1000000000000000.00, ARRAY[1,1,1]::numeric[]),
          ARRAY[333333333333333.34,333333333333333.33,333333333333333.33], '10^15 in cents');
SELECT is(allocate(100000000000000000000000, ARRAY[1,2]::numeric[], 1),
          ARRAY[33333333333333333333333,66666666666666666666667]::numeric[], 'beyond int64: numeric path');
SELECT is(allocate(1, ARRAY[0.0000000000000000001,0.0000000000000000002]::numeric[]),
          ARRAY[0.33,0.67], 'weights finer than int64 allows: numeric path');
SELECT is(allocate(NULL, ARRAY[1]::numeric[]), NULL, 'a NULL total gives NULL');

-- the window form: 8 desktops share 1234.56 of service cost
SELECT results_eq(
  $$SELECT allocate(1234.56, 1) OVER (ORDER BY d) FROM generate_series(1, 8) d$$,
  $$VALUES (154.32), (154.32), (154.32), (154.32), (154.32), (154.32), (154.32), (154.32)$$,
  'eight desktops, an even split');
SELECT results_eq(
  $$SELECT pool, allocate(total, w) OVER (PARTITION BY pool ORDER BY k)
      FROM (VALUES ('backup', 100, 1, 1), ('backup', 100, 1, 2), ('backup', 100, 1, 3),
                   ('support', 10, 3, 1), ('support', 10, 1, 2)) v(pool, total, w, k)
     ORDER BY pool, k$$,
  $$VALUES ('backup', 33.34), ('backup', 33.33), ('backup', 33.33), ('support', 7.50), ('support', 2.50)$$,
  'one split per partition');
SELECT results_eq(
  $$SELECT allocate(NULL, w) OVER () FROM (VALUES (1), (2)) v(w)$$,
  $$VALUES (NULL::numeric), (NULL)$$,
  'a NULL total gives NULL shares in a window');

-- refusals
SELECT throws_ok($$SELECT allocate(10, ARRAY[1,-1]::numeric[])$$, '22023', 'allocate weight must not be negative', 'negative weight');
SELECT throws_ok($$SELECT allocate(10, ARRAY[1,NULL]::numeric[])$$, '22004', 'allocate weight must not be null', 'NULL weight');
SELECT throws_ok($$SELECT allocate(10, ARRAY[0,0]::numeric[])$$, '22023', 'allocate weights sum to zero', 'weights summing to zero');
SELECT throws_ok($$SELECT allocate(10.001, ARRAY[1]::numeric[])$$, '22023', 'allocate total is not a whole number of minor units', 'total off the minor unit');
SELECT throws_ok($$SELECT allocate(10, ARRAY[1]::numeric[], 0)$$, '22023', 'allocate minor_unit must be greater than zero', 'zero minor unit');
SELECT throws_ok($$SELECT allocate('NaN', ARRAY[1]::numeric[])$$, '22023', 'allocate total must be a finite amount', 'NaN total');
SELECT throws_ok($$SELECT allocate(t, 1) OVER () FROM (VALUES (10), (20)) v(t)$$, '22023',
                 'allocate total changes within one partition', 'total changing within a partition');
SELECT throws_ok($$SELECT allocate(10, w) OVER () FROM (VALUES (1), (NULL)) v(w)$$, '22004',
                 'allocate weight must not be null', 'NULL weight in a window');
SELECT throws_ok($$SELECT allocate(10, 1, m::numeric) OVER () FROM (VALUES (0.01), (0.05)) v(m)$$, '22023',
                 'allocate minor_unit changes within one partition', 'minor unit changing within a partition');
SELECT throws_ok($$SELECT allocate(10, ARRAY[1,'NaN']::numeric[])$$, '22023',
                 'allocate weight must be a finite number', 'a NaN weight has its own message');
SELECT throws_ok($$SELECT allocate(10, w) OVER () FROM (VALUES (1::numeric), ('Infinity')) v(w)$$, '22023',
                 'allocate weight must be a finite number', 'an infinite weight in a window too');
SELECT throws_ok($$SELECT allocate(10, '{}'::numeric[])$$, '22023',
                 'allocate needs at least one weight', 'an empty array is not "weights sum to zero"');
-- a NULL minor unit: the same error in both forms; a NULL total: NULL in both
SELECT throws_ok($$SELECT allocate(10, ARRAY[1]::numeric[], NULL)$$, '22004',
                 'allocate minor_unit must not be null', 'array form refuses a NULL minor unit');
SELECT throws_ok($$SELECT allocate(10, 1, NULL) OVER ()$$, '22004',
                 'allocate minor_unit must not be null', 'window form refuses a NULL minor unit');
SELECT is(allocate(NULL, ARRAY[1]::numeric[], NULL), NULL, 'array form: a NULL total gives NULL before the minor unit is read');
SELECT results_eq($$SELECT allocate(NULL, 1, NULL) OVER ()$$, $$VALUES (NULL::numeric)$$,
                  'window form: a NULL total gives NULL before the minor unit is read');

SELECT * FROM finish();
