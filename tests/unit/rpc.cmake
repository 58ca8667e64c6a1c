# The RPC runtime test: a test-only service generated from rpc_test.proto.
set(rpc_test_gen ${CMAKE_CURRENT_BINARY_DIR}/gen)
add_custom_command(
  OUTPUT ${rpc_test_gen}/rpc_test.pb-c.c ${rpc_test_gen}/rpc_test.pb-c.h
  COMMAND ${CMAKE_COMMAND} -E make_directory ${rpc_test_gen}
  COMMAND ${PROTOC_C} --c_out=${rpc_test_gen} -I${CMAKE_CURRENT_SOURCE_DIR}
          ${CMAKE_CURRENT_SOURCE_DIR}/rpc_test.proto
  DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/rpc_test.proto)
om_unit_test(test_rpc test_rpc.c ${rpc_test_gen}/rpc_test.pb-c.c)
target_include_directories(test_rpc PRIVATE ${rpc_test_gen} ${CMAKE_SOURCE_DIR}/common)

# The request check (common/pbcheck.c) over test-only messages.
add_custom_command(
  OUTPUT ${rpc_test_gen}/pbcheck_test.pb-c.c ${rpc_test_gen}/pbcheck_test.pb-c.h
  COMMAND ${CMAKE_COMMAND} -E make_directory ${rpc_test_gen}
  COMMAND ${PROTOC_C} --c_out=${rpc_test_gen} -I${CMAKE_CURRENT_SOURCE_DIR} -I/usr/include
          ${CMAKE_CURRENT_SOURCE_DIR}/pbcheck_test.proto
  DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/pbcheck_test.proto)
om_unit_test(test_pbcheck test_pbcheck.c ${rpc_test_gen}/pbcheck_test.pb-c.c)
target_include_directories(test_pbcheck PRIVATE ${rpc_test_gen} ${CMAKE_SOURCE_DIR}/common)
