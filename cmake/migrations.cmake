# cmake -DDIR=migrations -DOUT=x_migrations.c -DSVC=x -P migrations.cmake
# Each file NNN_name.sql becomes one pg_migration {NNN, "name", "<sql>"}.
file(GLOB sqls ${DIR}/*.sql)
list(SORT sqls)
set(rows "")
foreach(f ${sqls})
  get_filename_component(base ${f} NAME_WE)
  if(NOT base MATCHES "^([0-9]+)_(.+)$")
    message(FATAL_ERROR "migration ${f} must be named NNN_name.sql")
  endif()
  set(ver ${CMAKE_MATCH_1})
  set(name ${CMAKE_MATCH_2})
  math(EXPR ver "${ver} + 0")
  file(READ ${f} sql HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "\\\\x\\1" sql "${sql}")
  string(REGEX REPLACE "((\\\\x[0-9a-f][0-9a-f]){40})" "\\1\"\n\"" sql "${sql}")
  string(APPEND rows "    {${ver}, \"${name}\", \"${sql}\"},\n")
endforeach()
file(WRITE ${OUT} "/* generated from ${DIR}; do not edit */\n#include \"pg.h\"\n"
  "const pg_migration ${SVC}_migrations[] = {\n${rows}};\n"
  "const size_t ${SVC}_n_migrations = sizeof ${SVC}_migrations / sizeof ${SVC}_migrations[0];\n")
