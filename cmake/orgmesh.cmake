# Build helpers shared by proto/, common/ and services/.

# om_embed(<out.c> <symbol> <input file>): a C array holding the file's bytes.
function(om_embed out symbol input)
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -DIN=${input} -DOUT=${out} -DSYM=${symbol}
            -P ${CMAKE_SOURCE_DIR}/cmake/embed.cmake
    DEPENDS ${input} ${CMAKE_SOURCE_DIR}/cmake/embed.cmake
    COMMENT "Embedding ${symbol}")
endfunction()

# om_migrations(<target> <dir>): compiles <dir>/NNN_*.sql into <target> as
# `const pg_migration <svc>_migrations[]` and `<svc>_n_migrations`.
function(om_migrations target svc dir)
  file(GLOB sqls CONFIGURE_DEPENDS ${dir}/*.sql)
  list(SORT sqls)
  set(out ${CMAKE_CURRENT_BINARY_DIR}/${svc}_migrations.c)
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -DDIR=${dir} -DOUT=${out} -DSVC=${svc}
            -P ${CMAKE_SOURCE_DIR}/cmake/migrations.cmake
    DEPENDS ${sqls} ${CMAKE_SOURCE_DIR}/cmake/migrations.cmake
    COMMENT "Embedding ${svc} migrations")
  target_sources(${target} PRIVATE ${out})
endfunction()

# om_service(<name> sources...): a service binary linked with the runtime.
function(om_service name)
  add_executable(orgmesh-${name} ${ARGN})
  target_link_libraries(orgmesh-${name} PRIVATE om_common)
  target_include_directories(orgmesh-${name} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/migrations)
    om_migrations(orgmesh-${name} ${name} ${CMAKE_CURRENT_SOURCE_DIR}/migrations)
  endif()
endfunction()
