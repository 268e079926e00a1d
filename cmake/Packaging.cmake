# Install rules for a system install and the Debian package (CPack DEB).
#
#   cmake -S . -B build-pkg -DFACTEUR_TESTS=OFF
#   cmake --build build-pkg -j2
#   (cd build-pkg && cpack -G DEB)        # or: cmake --build build-pkg --target package
#
# The programs go to <prefix>/sbin (the top-level CMakeLists.txt), the man
# pages to <prefix>/share/man. The system files have fixed absolute
# homes, whatever the prefix, because that is where the programs and
# systemd look for them: packaging/facteur.conf (absolute paths, unlike
# the checkout's conf/facteur.conf) as /etc/facteur/facteur.conf, and the
# systemd unit. The package's maintainer scripts create the facteur user
# and /var/spool/facteur.

set(FACTEUR_SYSCONF_DIR "/etc/facteur" CACHE PATH
    "Where the system configuration file is installed")
set(FACTEUR_SYSTEMD_UNIT_DIR "/lib/systemd/system" CACHE PATH
    "Where the systemd unit is installed")

set(FACTEUR_PACKAGING_DIR ${CMAKE_SOURCE_DIR}/packaging)
set(FACTEUR_MAN_SOURCES
    ${CMAKE_SOURCE_DIR}/docs/man/facteurd.8
    ${CMAKE_SOURCE_DIR}/docs/man/facteurctl.8
    ${CMAKE_SOURCE_DIR}/docs/man/facteur-sendmail.8
    ${CMAKE_SOURCE_DIR}/docs/man/facteur.conf.5)

# Man pages are mdoc, installed gzip'd as Debian policy wants (-n: no name
# or time stamp inside, so that two builds give the same file).
find_program(GZIP_PROGRAM gzip REQUIRED)
set(FACTEUR_MAN_BUILT "")
foreach(page ${FACTEUR_MAN_SOURCES})
  get_filename_component(name ${page} NAME)
  string(REGEX REPLACE ".*\\.([0-9])$" "\\1" section ${name})
  set(out ${CMAKE_BINARY_DIR}/man/${name}.gz)
  add_custom_command(OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/man
    COMMAND sh -c "\"$0\" -9nc \"$1\" > \"$2\"" ${GZIP_PROGRAM} ${page} ${out}
    DEPENDS ${page}
    COMMENT "Compressing man page ${name}"
    VERBATIM)
  list(APPEND FACTEUR_MAN_BUILT ${out})
  install(FILES ${out} DESTINATION share/man/man${section})
endforeach()
add_custom_target(man ALL DEPENDS ${FACTEUR_MAN_BUILT})

install(FILES ${FACTEUR_PACKAGING_DIR}/facteur.conf
        DESTINATION ${FACTEUR_SYSCONF_DIR}
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
install(FILES ${FACTEUR_PACKAGING_DIR}/facteurd.service
        DESTINATION ${FACTEUR_SYSTEMD_UNIT_DIR}
        PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
install(FILES ${CMAKE_SOURCE_DIR}/README.md
              ${CMAKE_SOURCE_DIR}/docs/configuration.md
              ${CMAKE_SOURCE_DIR}/docs/operations.md
              ${CMAKE_SOURCE_DIR}/docs/spool.md
        DESTINATION share/doc/facteur OPTIONAL)

# The release notes as Debian names an upstream changelog (changelog.gz),
# and the licence as its copyright file.
set(FACTEUR_CHANGELOG_BUILT ${CMAKE_BINARY_DIR}/doc/changelog.gz)
add_custom_command(OUTPUT ${FACTEUR_CHANGELOG_BUILT}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/doc
  COMMAND sh -c "\"$0\" -9nc \"$1\" > \"$2\"" ${GZIP_PROGRAM}
          ${CMAKE_SOURCE_DIR}/NEWS ${FACTEUR_CHANGELOG_BUILT}
  DEPENDS ${CMAKE_SOURCE_DIR}/NEWS
  COMMENT "Compressing NEWS"
  VERBATIM)
add_custom_target(changelog ALL DEPENDS ${FACTEUR_CHANGELOG_BUILT})
install(FILES ${FACTEUR_CHANGELOG_BUILT} DESTINATION share/doc/facteur)
if(EXISTS ${CMAKE_SOURCE_DIR}/LICENSE)
  install(FILES ${CMAKE_SOURCE_DIR}/LICENSE DESTINATION share/doc/facteur
          RENAME copyright)
else()
  message(WARNING "No LICENSE file: the package will have no copyright file")
endif()

# facteur is the system's MTA once installed (it Provides and Conflicts
# with mail-transport-agent below), so it answers to the names programs
# submit through: /usr/sbin/sendmail and /usr/lib/sendmail, and to the
# names of sendmail's other modes, which facteur-sendmail tells by its
# argv[0]: /usr/bin/mailq (-bp) and /usr/bin/newaliases (-bi).
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/links)
file(CREATE_LINK facteur-sendmail ${CMAKE_BINARY_DIR}/links/sbin-sendmail
     SYMBOLIC)
file(CREATE_LINK ../sbin/sendmail ${CMAKE_BINARY_DIR}/links/lib-sendmail
     SYMBOLIC)
file(CREATE_LINK ../sbin/facteur-sendmail ${CMAKE_BINARY_DIR}/links/bin-mailq
     SYMBOLIC)
file(CREATE_LINK ../sbin/facteur-sendmail
     ${CMAKE_BINARY_DIR}/links/bin-newaliases SYMBOLIC)
install(FILES ${CMAKE_BINARY_DIR}/links/sbin-sendmail DESTINATION sbin
        RENAME sendmail)
install(FILES ${CMAKE_BINARY_DIR}/links/lib-sendmail DESTINATION lib
        RENAME sendmail)
install(FILES ${CMAKE_BINARY_DIR}/links/bin-mailq DESTINATION bin
        RENAME mailq)
install(FILES ${CMAKE_BINARY_DIR}/links/bin-newaliases DESTINATION bin
        RENAME newaliases)

# ---- CPack: the Debian package ----
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "facteur")
set(CPACK_PACKAGE_VENDOR "facteur")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "small mail transfer agent: SMTP relay, smarthost and Maildir delivery")
set(CPACK_PACKAGE_DESCRIPTION
    "facteur accepts mail over SMTP, stores each message durably before it\n\
answers 250, delivers mail for its local domains into Maildir or mbox\n\
mailboxes, and relays the rest to MX hosts or to a smarthost chosen by a\n\
routing table, with retries, bounces, TLS and SMTP AUTH. One process, one\n\
event loop; Prometheus metrics over HTTP; POP3 access to the mailboxes.")
set(CPACK_PACKAGE_CONTACT "facteur maintainers <postmaster@localhost>")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_STRIP_FILES TRUE)

set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION "mail")
set(CPACK_DEBIAN_PACKAGE_PRIORITY "optional")
# dpkg-shlibdeps finds the libraries the programs link (libevent, OpenSSL,
# c-ares, libcrypt); the maintainer scripts need adduser.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
# One MTA per system (Debian Policy 11.6): installing facteur replaces
# exim4, postfix or any other, and satisfies what depends on an MTA.
set(CPACK_DEBIAN_PACKAGE_PROVIDES "mail-transport-agent")
set(CPACK_DEBIAN_PACKAGE_CONFLICTS "mail-transport-agent")
set(CPACK_DEBIAN_PACKAGE_REPLACES "mail-transport-agent")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
# /etc/facteur/facteur.conf is a conffile: an upgrade keeps the operator's
# edits (dpkg asks), a purge removes it.
file(WRITE ${CMAKE_BINARY_DIR}/debian/conffiles
     "${FACTEUR_SYSCONF_DIR}/facteur.conf\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_BINARY_DIR}/debian/conffiles
    ${FACTEUR_PACKAGING_DIR}/debian/postinst
    ${FACTEUR_PACKAGING_DIR}/debian/prerm
    ${FACTEUR_PACKAGING_DIR}/debian/postrm)

include(CPack)
